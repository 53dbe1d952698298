#!/usr/bin/env python3
"""Decode postback's single-object encoded records with fastavro.

An independent Avro implementation is the proof that what the services write
is standard Avro other teams can read. Reads a manifest of
[{"record": path, "schema": path}], checks the marker and the CRC-64-AVRO
fingerprint against fastavro's own, decodes each datum and prints one JSON
line {schema_name: decoded_record} (bytes as hex).
"""
import io
import json
import sys

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

KIND = {
    "ConversionRaw": "conversion_raw",
    "ConversionEnriched": "conversion_enriched",
    "DeliveryStatus": "delivery_status",
    "DeadLetter": "dead_letter",
}


def plain(value):
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def main(manifest_path):
    out = {}
    for entry in json.load(open(manifest_path)):
        raw_schema = json.load(open(entry["schema"]))
        schema = fastavro.parse_schema(raw_schema)
        data = open(entry["record"], "rb").read()
        if data[:2] != b"\xc3\x01":
            sys.exit(f"{entry['record']}: no single-object marker")
        # fastavro prints the fingerprint's little-endian bytes, as on the wire.
        want = fingerprint(to_parsing_canonical_form(raw_schema), "CRC-64-AVRO")
        got = data[2:10].hex()
        if want != got:
            sys.exit(f"{entry['record']}: fingerprint {got} != fastavro's {want}")
        buf = io.BytesIO(data[10:])
        record = fastavro.schemaless_reader(buf, schema, schema)
        if buf.read():
            sys.exit(f"{entry['record']}: trailing bytes")
        out[KIND[raw_schema["name"]]] = plain(record)
    print(json.dumps(out, sort_keys=True, default=str))


if __name__ == "__main__":
    main(sys.argv[1])
