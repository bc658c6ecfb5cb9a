from messaging.chassis.app import service_main
from shipping.spec import SPEC

service_main(SPEC)
