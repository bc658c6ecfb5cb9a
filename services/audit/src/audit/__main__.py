from audit.spec import SPEC
from messaging.chassis.app import service_main

service_main(SPEC)
