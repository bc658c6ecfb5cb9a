from messaging.chassis.app import service_main
from payment.spec import SPEC

service_main(SPEC)
