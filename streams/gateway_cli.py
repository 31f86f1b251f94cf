"""The gateway's commands: `selfevolve gateway` (serve) and `selfevolve keys create|list|revoke` (its API keys)."""

from __future__ import annotations

import sys

from selfevolve.config import Settings


def _gateway(args, settings: Settings) -> int:
    from streams.gateway import serve

    overrides = {k: v for k, v in (("gateway_host", args.host), ("gateway_port", args.port)) if v is not None}
    settings = settings.model_copy(update=overrides) if overrides else settings
    print(f"gateway on http://{settings.gateway_host}:{settings.gateway_port}/v1", file=sys.stderr)
    serve(settings)
    return 0


def _keys(args, settings: Settings) -> int:
    from streams.gateway_keys import create_key, keys_file, read_table, revoke_key

    if args.action == "create":
        key, entry = create_key(settings, args.tenant, budget_usd_day=args.budget, rate_per_min=args.rate,
                                name=args.name or "")
        print(key)  # the only time the key is shown: only its hash is kept
        print(f"key {entry.key_id} for tenant {entry.tenant} stored (hashed) in {keys_file(settings)}; "
              "it is shown only this once", file=sys.stderr)
        return 0
    if args.action == "revoke":
        gone = revoke_key(settings, args.key_id)
        print(f"revoked key {gone.key_id} of tenant {gone.tenant}", file=sys.stderr)
        return 0
    for e in read_table(keys_file(settings)).entries.values():
        budget = "default" if e.budget_usd_day is None else f"${e.budget_usd_day:g}/day"
        rate = "default" if e.rate_per_min is None else f"{e.rate_per_min:g}/min"
        print(f"{e.key_id}  {e.tenant:16} {budget:>12} {rate:>10}  {'revoked' if e.revoked else 'live'}  {e.name}")
    return 0


def add_parsers(sub) -> None:
    gw = sub.add_parser("gateway", help="serve the OpenAI-compatible API (/v1/chat/completions) onto the topics")
    gw.add_argument("--host", help="listen address (default settings.gateway_host)")
    gw.add_argument("--port", type=int, help="listen port (default settings.gateway_port)")
    gw.set_defaults(fn=_gateway)
    ks = sub.add_parser("keys", help="the gateway's API keys (stored hashed; a key names one tenant)")
    ks_sub = ks.add_subparsers(dest="action", required=True)
    kc = ks_sub.add_parser("create", help="make a key for TENANT and print it once")
    kc.add_argument("tenant")
    kc.add_argument("--budget", type=float, help="USD per UTC day (default settings.gateway_budget_usd_day)")
    kc.add_argument("--rate", type=float, help="requests per minute (default settings.gateway_rate_per_min)")
    kc.add_argument("--name", help="a label for `keys list`")
    ks_sub.add_parser("list", help="key ids, tenants and limits (never the keys)")
    kr = ks_sub.add_parser("revoke", help="revoke a key by its id (from `keys list`)")
    kr.add_argument("key_id")
    ks.set_defaults(fn=_keys)
