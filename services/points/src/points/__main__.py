from points.main import main

main()
