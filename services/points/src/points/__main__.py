from messaging.chassis.app import consumer_main
from points.spec import SPEC

consumer_main(SPEC)
