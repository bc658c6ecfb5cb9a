from audit.spec import SPEC
from messaging.chassis.app import consumer_main

consumer_main(SPEC)
