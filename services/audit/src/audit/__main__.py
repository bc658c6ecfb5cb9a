from audit.spec import SPEC
from messaging.app import consumer_main

consumer_main(SPEC)
