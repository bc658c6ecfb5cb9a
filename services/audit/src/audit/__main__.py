from audit.main import main

main()
