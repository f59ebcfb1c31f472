# The tests' own S3 client (shomei_testkit::s3): boto3, the AWS SDK for Python, from the S3
# server's virtualenv, so what the bucket holds is seen through code Shomei does not share.
# argv: ENDPOINT BUCKET KEY_ID SECRET COMMAND [ARG]; object bytes on stdin/stdout, the rest JSON.
import json
import sys

import boto3
from botocore.config import Config

endpoint, bucket, key_id, secret, command = sys.argv[1:6]
arg = sys.argv[6] if len(sys.argv) > 6 else None
s3 = boto3.client(
    "s3",
    endpoint_url=endpoint,
    aws_access_key_id=key_id,
    aws_secret_access_key=secret,
    region_name="us-east-1",
    config=Config(s3={"addressing_style": "path"}),
)
if command == "create-bucket":
    s3.create_bucket(Bucket=bucket)
elif command == "list":
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=arg):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    print(json.dumps(keys))
elif command == "get":
    sys.stdout.buffer.write(s3.get_object(Bucket=bucket, Key=arg)["Body"].read())
elif command == "put":
    s3.put_object(Bucket=bucket, Key=arg, Body=sys.stdin.buffer.read())
elif command == "etag":
    print(json.dumps(s3.head_object(Bucket=bucket, Key=arg)["ETag"].strip('"')))
elif command == "uploads":
    uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    print(json.dumps([u["Key"] for u in uploads]))
else:
    sys.exit(f"unknown command {command}")
