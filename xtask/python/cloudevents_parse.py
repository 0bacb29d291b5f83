"""Parses CloudEvents with the official Python SDK (v2, strict validation), independently of
emissions. Reads a JSON list of messages on stdin, each one of
  {"binding": "http",  "headers": {name: value}, "body": base64}
  {"binding": "kafka", "headers": {name: value}, "key": text or null, "body": base64}
  {"binding": "json",  "body": base64}            (a structured event on its own)
and prints, per message, the attributes the SDK read (time as RFC 3339) and the data."""

import base64
import json
import sys

from cloudevents.core.bindings import http, kafka
from cloudevents.core.formats.json import JSONFormat

fmt = JSONFormat()
out = []
for message in json.load(sys.stdin):
    body = base64.b64decode(message["body"])
    binding = message["binding"]
    if binding == "http":
        event = http.from_http(http.HTTPMessage(headers=message["headers"], body=body), fmt)
    elif binding == "kafka":
        headers = {k: v.encode("utf-8") for k, v in message["headers"].items()}
        key = message.get("key")
        event = kafka.from_kafka(
            kafka.KafkaMessage(headers=headers, key=key.encode() if key else None, value=body),
            fmt,
        )
    else:
        event = fmt.read(None, body)
    attributes = dict(event.get_attributes())
    time = attributes.get("time")
    if time is not None:
        attributes["time"] = time.isoformat()
    data = event.get_data()
    if isinstance(data, bytes):
        data = json.loads(data)
    out.append({"attributes": attributes, "data": data})
print(json.dumps(out))
