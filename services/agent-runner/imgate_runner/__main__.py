from imgate_runner.main import main

main()
