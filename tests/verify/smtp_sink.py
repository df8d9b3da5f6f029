"""A real SMTP server on loopback for the e-mail tests (aiosmtpd from PyPI, in .venv).

Usage: smtp_sink.py PORT [REPLY]. Prints "ready" once it accepts connections, then one JSON
line per message received: {"mail_from", "rcpt_tos", "data"}. With REPLY (e.g. "550 5.1.1 no
such mailbox"), every message is refused with that reply instead.
"""

import json
import sys
import time

from aiosmtpd.controller import Controller


class Recorder:
    def __init__(self, reply):
        self.reply = reply

    async def handle_DATA(self, server, session, envelope):
        if self.reply:
            return self.reply
        print(json.dumps({
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "data": envelope.content.decode("utf-8", "replace"),
        }), flush=True)
        return "250 Message accepted for delivery"


def main():
    port = int(sys.argv[1])
    reply = sys.argv[2] if len(sys.argv) > 2 else None
    controller = Controller(Recorder(reply), hostname="127.0.0.1", port=port)
    controller.start()
    print("ready", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
