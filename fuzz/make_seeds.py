#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (fuzz/corpus/<target>/), one file per seed.

Run from anywhere: python3 fuzz/make_seeds.py. The seeds are committed; rerun only to change them.
Input formats are described in fuzz/src/lib.rs.
"""
import base64, hashlib, hmac, json, os, shutil

HERE = os.path.dirname(os.path.abspath(__file__))
SECRET = b"fuzz-hmac-secret-fuzz-hmac-secret-0123"
FOREVER = 253402300799  # the latest NumericDate the verifier accepts

TOOLS = sorted(["calendar.create_event", "email.send", "file.read", "payments.refund", "shell.exec", "web.search"])
VALID = {
    "calendar.create_event": '{"title": "sync", "start": "2026-01-01T10:00:00Z", "duration_minutes": 30, "attendees": ["bob@example.com"]}',
    "email.send": '{"to": "bob@example.com", "subject": "hi", "body": "hello", "cc": ["carol@example.com"]}',
    "file.read": '{"path": "/srv/notes.txt"}',
    "payments.refund": '{"payment_id": "p-1", "amount": 50, "currency": "EUR", "reason": "late"}',
    "shell.exec": '{"command": "ls", "workdir": "/tmp"}',
    "web.search": '{"query": "rust fuzzing", "max_results": 10}',
}
HOSTILE_ARGS = [
    '{"query": "q", "max_results": 500, "max_results": 5}',
    '{"path": "/etc/shadow", "path": "/tmp/x"}',
    '{"query": {"__entity": {"type": "Role", "id": "admin"}}}',
    '{"query": "q", "__extn": {"fn": "ip", "arg": "10.0.0.1"}}',
    '{"payment_id": "p", "amount": 18446744073709551616, "currency": "EUR"}',
    '{"payment_id": "p", "amount": 1e30, "currency": "EUR"}',
    '{"payment_id": "p", "amount": -9223372036854775809, "currency": "EUR"}',
    '{"payment_id": "p", "amount": "NaN", "currency": "EUR"}',
    '{"query": "\\ud800"}',
    '{"query": "a\\u0000b"}',
    '{"query": "q", "x": ' + "[" * 40 + "]" * 40 + "}",
    '{"query": "q"} trailing',
    "[1, 2]",
    "null",
    "",
    '{"to": ["a@example.com"], "subject": "s", "body": "b"}',
    # Found by the args target: a duplicate key followed by text that is not JSON.
    '{"query": "q", "max_results": 500, "max_results"\x1a 5}',
    # A NUL in a key, at the top and deeper (it reached the trail as INTERNAL).
    '{"query": "q", "a\\u0000b": 1}',
    '{"query": "q", "x": [{"\\u0000": null}]}',
]
LOOK_ALIKES = ["\u0435mail.send", "\u200bemail.send", "Email.Send", "email.send.", "email.send ", "\u202ednes.liame", "\uff45mail.send", "sh\u0435ll.exec", "email..send", "email/send"]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def hs256(header: dict, claims, raw_claims: bool = False) -> str:
    h = b64(json.dumps(header, separators=(",", ":")).encode())
    c = b64(claims.encode() if raw_claims else json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(SECRET, f"{h}.{c}".encode(), hashlib.sha256).digest()
    return f"{h}.{c}.{b64(sig)}"


def claims(**extra):
    c = {"iss": "broker-dev", "aud": "agent-broker", "sub": "agent-7", "iat": 1700000000, "exp": FOREVER, "roles": ["agent"]}
    c.update(extra)
    return c


def write(target: str, seeds: list) -> None:
    d = os.path.join(HERE, "corpus", target)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for i, seed in enumerate(seeds):
        with open(os.path.join(d, f"seed-{i:03}"), "wb") as f:
            f.write(seed if isinstance(seed, bytes) else seed.encode())


def main() -> None:
    args = [bytes([i]) + VALID[t].encode() for i, t in enumerate(TOOLS)]
    for i, text in enumerate(HOSTILE_ARGS):
        args.append(bytes([i % len(TOOLS)]) + text.encode())
    write("args", args)

    header = {"alg": "HS256", "typ": "JWT"}
    hj = json.dumps(header).encode()
    cj = json.dumps(claims()).encode()
    jwt = [
        b"\x00" + hs256(header, claims()).encode(),
        b"\x00" + hs256({"alg": "HS256"}, claims(on_behalf_of="alice", tenant="acme", groups=["g"])).encode(),
        b"\x00" + hs256({"alg": "none"}, claims()).encode(),
        b"\x00" + hs256({"alg": "HS256", "kid": "../../etc/passwd"}, claims()).encode(),
        b"\x00" + hs256({"alg": "HS256", "crit": ["exp"]}, claims()).encode(),
        b"\x00" + hs256({"alg": "HS256", "typ": "dpop+jwt"}, claims()).encode(),
        b"\x00" + hs256(header, json.dumps(claims())[:-1] + ', "sub": "admin"}', raw_claims=True).encode(),
        b"\x00" + hs256({"alg": "RS256", "kid": "rsa-1"}, claims()).encode(),
        b"\x00a.b.c",
        b"\x00",
        b"\x01" + hj + b"\x00" + cj,
        b"\x01" + hj + b"\x00" + json.dumps(claims(exp="soon")).encode(),
        b"\x01" + hj + b"\x00" + json.dumps(claims(exp=1e20)).encode(),
        b"\x01" + hj + b"\x00" + json.dumps(claims(nbf=FOREVER)).encode(),
        b"\x01" + hj + b"\x00" + cj[:-1] + b', "roles": ["admin"]}',
        b"\x01" + b'{"alg":"HS256","alg":"none"}' + b"\x00" + cj,
        b"\x01" + b'{"alg":"HS256","typ":"at+jwt","jku":"https://attacker.example/k"}' + b"\x00" + cj,
        b"\x01" + hj + b"\x00" + json.dumps(claims(aud=["x", "agent-broker"])).encode(),
        b"\x01" + hj + b"\x00" + b'{"sub": "\\ud800"}',
        b"\x01" + hj + b"\x00" + b"[" * 200 + b"]" * 200,
        b"\x01" + hj + b"\x00" + json.dumps(claims(sub="agent\x007", on_behalf_of="alice\x00")).encode(),
        b"\x01" + hj + b"\x00" + json.dumps(claims(tenant="acme\x00", groups=["g\x00"])).encode(),
        b"\x01" + hj + b"\x00" + cj[:-1] + b', "x\\u0000": 1}',
    ]
    write("jwt", jwt)

    authorize = [f"{t}\x00{VALID[t]}" for t in TOOLS]
    authorize += [f"web.search\x00{a}" for a in HOSTILE_ARGS]
    authorize += [f"{name}\x00{VALID['email.send']}" for name in LOOK_ALIKES]
    authorize += ['payments.refund\x00{"payment_id": "p", "amount": 200000, "currency": "EUR"}', "nope\x00{}", "\x00{}"]
    write("authorize", [s.encode() for s in authorize])


if __name__ == "__main__":
    main()
