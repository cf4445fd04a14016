#!/usr/bin/env python3
"""Prepares a gateway benchmark: N users, each with a funded USD wallet; writes
`token from_wallet to_wallet` lines (each user pays the next one) for send.lua.

usage: setup.py http://127.0.0.1:8081 WEBHOOK_SECRET USERS OUT_FILE
"""
import hashlib, hmac, json, sys, time, urllib.request, uuid

base, secret, count, out = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3]), sys.argv[4]
run = uuid.uuid4().hex[:8]


def call(method, path, body=None, token=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", "Bearer " + token)
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read() or b"null")


users = []
for i in range(count):
    email = f"bench-{run}-{i}@example.com"
    call("POST", "/api/v1/users/register", {"email": email, "password": "benchmark password"})
    token = call("POST", "/api/v1/users/login", {"email": email, "password": "benchmark password"})["access_token"]
    wallet = call("POST", "/api/v1/wallets", {"currency": "USD"}, token)["id"]
    event = json.dumps({"id": f"bench-{run}-{i}", "type": "deposit.succeeded",
                        "data": {"wallet_id": wallet, "amount": "1000000.00", "currency": "USD"}})
    now = str(int(time.time()))
    signature = hmac.new(secret, (now + "." + event).encode(), hashlib.sha256).hexdigest()
    request = urllib.request.Request(base + "/api/v1/webhooks/provider", data=event.encode(), method="POST")
    request.add_header("paycore-signature", f"t={now},v1={signature}")
    urllib.request.urlopen(request).read()
    users.append((token, wallet))

with open(out, "w") as f:
    for i, (token, wallet) in enumerate(users):
        f.write(f"{token} {wallet} {users[(i + 1) % count][1]}\n")
print(f"{count} users funded; lines in {out}")
