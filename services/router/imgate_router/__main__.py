from imgate_router.main import main

main()
