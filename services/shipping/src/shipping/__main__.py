from messaging.chassis.app import consumer_main
from shipping.spec import SPEC

consumer_main(SPEC)
