"""Drives the real Segment Python library (segment-analytics-python) against a nurture server.

Usage: python3 segment_python.py HOST WRITE_KEY
Identifies three people, sends anonymous page views that are later identified, and tracks
events. Exits non-zero if the library reports any error.
"""
import sys

from segment.analytics import Client

host, write_key = sys.argv[1], sys.argv[2]
errors = []
client = Client(write_key, host=host, on_error=lambda error, items: errors.append(repr(error)), max_retries=1)

# A visitor browses anonymously, then signs up: the history must merge into one contact.
client.page(anonymous_id="anon-ada", name="Pricing", properties={"path": "/pricing"})
client.page(anonymous_id="anon-ada", name="Whitepaper", properties={"path": "/whitepaper"})
client.identify("user-ada", {"email": "Ada@Example.com", "first_name": "Ada", "industry": "software"}, anonymous_id="anon-ada")
client.track("user-ada", "Whitepaper Downloaded", {"topic": "automation"})

client.identify("user-bo", {"email": "bo@example.com", "phone": "138 0013 8000", "region": "Shanghai", "industry": "manufacturing"})
client.track("user-bo", "Pricing Page Viewed", {"plan": "enterprise"})

client.identify("user-cy", {"email": "cy@example.com", "language": "zh"})
client.track("user-cy", "Order Completed", {"revenue": 990, "cart_id": "c-1"})

client.flush()
client.join()
if errors:
    print("errors:", errors, file=sys.stderr)
    sys.exit(1)
print("sent")
