from payment.main import main

main()
