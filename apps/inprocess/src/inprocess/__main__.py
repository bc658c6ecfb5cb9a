from inprocess.main import main

main()
