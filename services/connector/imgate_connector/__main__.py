from imgate_connector.main import main

main()
