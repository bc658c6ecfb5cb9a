from messaging.chassis.app import service_main
from points.spec import SPEC

service_main(SPEC)
