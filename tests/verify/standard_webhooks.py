"""Verify captured webhook requests with the Standard Webhooks reference library (PyPI
`standardwebhooks`, installed in .venv by scripts/setup.sh), independently of our Rust code.

Usage: standard_webhooks.py SECRET < requests.json
requests.json: [{"headers": {...}, "body": "<exact body text>"}, ...]
Prints one line per request: "ok" or "fail: <reason>"; exits 0 either way.
"""
import json
import sys

from standardwebhooks.webhooks import Webhook

secret = sys.argv[1]
hook = Webhook(secret)
for request in json.load(sys.stdin):
    try:
        hook.verify(request["body"], request["headers"])
        print("ok")
    except Exception as e:  # the library raises WebhookVerificationError and friends
        print(f"fail: {type(e).__name__}: {e}")
