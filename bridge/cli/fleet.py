"""`plcbridge fleet publish-stats | merge`: federated PCA through an MQTT broker (docs/fleet.md).

``publish-stats`` is ``train --export-stats`` whose output goes to the broker (retained on
``F/M/stats/B``) instead of a file; ``merge`` runs anywhere with broker access: it collects the
retained statistics, merges them with ``train --from-stats``'s code, writes the candidate and
its card, and publishes the model bytes (retained on ``F/M/model``) and a card with their
sha256 and threshold. Bridges with ``[fleet]`` install it through the REST upload's validation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridge.cli.common import EXIT_FAILED, EXIT_OK, fail, fail_config, load_config_or_exit
from bridge.config.fleet import FLEET_PREFIX, FleetConfig, RolloutSpec, topic_level
from bridge.core.errors import ConfigError
from bridge.core.extras import require_extra
from bridge.ml.dataset import DataError, load_csv

__all__ = ["add_fleet"]


def _broker(args: argparse.Namespace, role: str) -> FleetConfig:
    """``[fleet]`` of --config, or one built from --broker; ``role`` names the client."""
    if args.config is not None:
        fleet = load_config_or_exit(args.config).fleet
        if fleet is None:
            raise ConfigError([f"{args.config}: has no [fleet] section (or use --broker HOST[:PORT])"])
    else:
        host, _, port = args.broker.rpartition(":") if ":" in args.broker else (args.broker, "", "")
        fleet = FleetConfig(host=host, port=int(port) if port else None, topic_prefix=args.prefix,
                            username=args.username, password_env=args.password_env)
    # One client id per run: three sites publishing from one host must not kick each other.
    bridge_id = getattr(args, "bridge_id", None) or fleet.effective_bridge_id
    return fleet.model_copy(update={"bridge_id": bridge_id,
                                    "client_id": f"plcbridge-fleet-{role}-{bridge_id}-{os.getpid()}"})


def _publish_stats(args: argparse.Namespace) -> int:
    require_extra("aiomqtt", "fleet publish-stats")
    from bridge.ml.fleet import stats_payload
    from bridge.ml.train import TrainOptions
    from bridge.sinks.fleet_broker import publish_retained, topic

    inputs = tuple(s.strip() for s in args.inputs.split(",")) if args.inputs else None
    opts = TrainOptions(kind="pca", inputs=inputs, window=args.window, period=args.period,
                        train_rows=args.train_rows, max_age=args.max_age)

    def body() -> int:
        topic_level(args.model)
        config = _broker(args, "stats")
        payload = stats_payload(load_csv(args.data), opts)
        where = topic(config.topic_prefix, args.model, "stats", config.effective_bridge_id)
        asyncio.run(publish_retained(config, [(where, payload)]))
        print(f"published {where}: {len(payload)} bytes of statistics, no raw data")
        return EXIT_OK

    return _guarded(args, "publish-stats", body)


def _guarded(args: argparse.Namespace, command: str, body: Callable[[], int]) -> int:
    """``body()``, with bad input exit 2 (one line naming the culprit) and a broker that cannot
    be reached exit 1 (worth retrying)."""
    from bridge.sinks.fleet_broker import MqttError

    try:
        return body()
    except ConfigError as exc:
        return fail_config(args.config or "fleet", exc)
    except (DataError, ValueError) as exc:
        return fail(str(exc))
    except MqttError as exc:
        print(f"fleet {command}: {exc}", flush=True)
        return EXIT_FAILED


def _merge(args: argparse.Namespace) -> int:
    require_extra("aiomqtt", "fleet merge")
    require_extra("scipy", "fleet merge")
    from bridge.ml.fleet import card_payload, merge_payloads
    from bridge.ml.train import TrainOptions
    from bridge.sinks.fleet_broker import collect_retained, sha256, topic

    opts = TrainOptions(kind="pca", target_far=args.target_far, margin=args.margin, name=args.model)

    def body() -> int:
        opts.check()
        topic_level(args.model)
        if args.out.exists() and not args.force:
            return fail(f"{args.out}: exists (use --force to overwrite)")
        config = _broker(args, "merge")
        prefix = config.topic_prefix
        request = None if not args.request_stats else (
            topic(prefix, args.model, "request-stats"), json.dumps({"from": config.client_id}).encode())
        found = asyncio.run(collect_retained(config, topic(prefix, args.model, "stats", "+"),
                                             min_count=args.min_sites, wait=args.wait, request=request))
        sites = {name.rsplit("/", 1)[-1]: payload for name, payload in found.items()}
        if len(sites) < args.min_sites:
            print(f"fleet merge: {len(sites)} sites published statistics for {args.model} "
                  f"({', '.join(sorted(sites)) or 'none'}) within {args.wait:g} s; --min-sites is "
                  f"{args.min_sites}", flush=True)
            return EXIT_FAILED
        result = merge_payloads(sites, args.out, opts)
        data = args.out.read_bytes()
        digest = sha256(data)
        spec = _rollout(args)
        card = card_payload(result, sorted(sites), digest, spec)
        if not args.no_publish:
            _publish_model(config, args.model, card, data)
        where = ("kept local (--no-publish)" if args.no_publish
                 else f"published on {topic(prefix, args.model, 'model')} ({_describe(spec)})")
        print(f"wrote {result.path} and {result.card}: {len(sites)} sites ({', '.join(sorted(sites))}), "
              f"{result.rows} rows, {result.fit_windows} windows, threshold "
              f"{result.contract.threshold:.6g} (analytic, target FAR {100 * opts.target_far:g} %), "
              f"sha256 {digest}; {where}")
        return EXIT_OK

    return _guarded(args, "merge", body)


def _rollout(args: argparse.Namespace) -> dict[str, Any] | None:
    """The card's rollout from the command line (None: every bridge installs at once)."""
    rule = {key: value for key, value in (("period_s", args.period_s), ("max_far", args.max_far),
                                          ("min_windows", args.min_windows)) if value is not None}
    if rule and not args.shadow:
        raise ValueError("--period-s, --max-far and --min-windows need --shadow")
    bridges = [b.strip() for b in args.bridges.split(",") if b.strip()] if args.bridges else []
    if not (bridges or args.fraction is not None or args.shadow):
        return None
    spec = RolloutSpec(bridges=bridges, fraction=args.fraction, shadow=args.shadow, rule=rule)
    return spec.model_dump()


def _describe(spec: dict[str, Any] | None) -> str:
    if spec is None:
        return "every bridge installs it"
    who = ", ".join(filter(None, [f"bridges {','.join(spec['bridges'])}" if spec["bridges"] else "",
                                  f"fraction {spec['fraction']:g}" if spec["fraction"] else ""]))
    how = "in shadow" if spec["shadow"] else "installed at once"
    return f"{who or 'every bridge'}, {how}"


def _publish_model(config: FleetConfig, model: str, card: bytes, data: bytes) -> None:
    from bridge.sinks.fleet_broker import publish_retained, topic

    # The card first: whoever sees the model can then look up what it is and how to take it.
    asyncio.run(publish_retained(config, [(topic(config.topic_prefix, model, "card"), card),
                                          (topic(config.topic_prefix, model, "model"), data)]))


def _rollout_file(args: argparse.Namespace) -> int:
    require_extra("aiomqtt", "fleet rollout")
    from bridge.sinks.fleet_broker import sha256, topic

    def body() -> int:
        topic_level(args.model)
        data = args.file.read_bytes()
        config = _broker(args, "rollout")
        digest = sha256(data)
        spec = _rollout(args)
        card = json.dumps({"rollout": spec, "model": args.model, "sha256": digest, "bytes": len(data),
                           "file": args.file.name}).encode()
        _publish_model(config, args.model, card, data)
        print(f"published {args.file} on {topic(config.topic_prefix, args.model, 'model')}: sha256 "
              f"{digest}; {_describe(spec)}")
        return EXIT_OK

    return _guarded(args, "rollout", body)


def _rollout_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("rollout (stated in the card; docs/fleet.md)")
    g.add_argument("--bridges", default=None, metavar="B1,B2",
                   help="only these bridge ids take the model (with --fraction: either)")
    g.add_argument("--fraction", type=float, default=None,
                   help="a share of the bridges, chosen by a hash of bridge id and model sha256")
    g.add_argument("--shadow", action="store_true",
                   help="stage in shadow beside the active model; promoted or rejected by the rule")
    g.add_argument("--period-s", type=float, default=None, help="shadow rule: observation seconds")
    g.add_argument("--max-far", type=float, default=None, help="shadow rule: highest false-alarm rate")
    g.add_argument("--min-windows", type=int, default=None, help="shadow rule: windows compared at least")


def _broker_args(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--broker", metavar="HOST[:PORT]", help="the MQTT broker (plain, port 1883)")
    where.add_argument("--config", help="a bridge config: its [fleet] section names the broker")
    p.add_argument("--prefix", default=FLEET_PREFIX, help=f"topic prefix (default {FLEET_PREFIX})")
    p.add_argument("--username", default=None)
    p.add_argument("--password-env", default=None, metavar="VAR",
                   help="environment variable with the password")
    p.add_argument("--model", required=True, help="the model name (as in the bridges' [[models]])")


def add_fleet(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fleet = sub.add_parser("fleet", help="federated PCA through an MQTT broker (docs/fleet.md)")
    commands = fleet.add_subparsers(dest="fleet_command", required=True)

    p = commands.add_parser("publish-stats", help="publish this site's PCA statistics (never rows)")
    p.add_argument("data", type=Path, help="a recording of normal operation (plcbridge record)")
    _broker_args(p)
    p.add_argument("--bridge-id", default=None,
                   help="this site's id (default: [fleet] bridge_id or host name)")
    p.add_argument("--inputs", help="comma-separated columns, in model order (default: all signals)")
    p.add_argument("--window", type=int, default=5, help="window length in samples (default 5)")
    p.add_argument("--period", type=float, default=1.0, help="seconds between samples (default 1)")
    p.add_argument("--train-rows", type=int, default=None, help="use only the first N rows")
    p.add_argument("--max-age", type=float, default=None, help="sample max age, s (default 2.5 x period)")
    p.set_defaults(func=_publish_stats)

    p = commands.add_parser("merge", help="merge the published statistics, publish the candidate")
    _broker_args(p)
    p.add_argument("--out", required=True, type=Path, help="candidate model to write (card: .md)")
    p.add_argument("--min-sites", type=int, default=1, help="refuse with fewer sites (default 1)")
    p.add_argument("--wait", type=float, default=10.0, help="seconds to wait for statistics (default 10)")
    p.add_argument("--target-far", type=float, default=0.01, help="target false-alarm rate (default 0.01)")
    p.add_argument("--margin", type=float, default=None, help="threshold margin (default 2 for pca)")
    p.add_argument("--request-stats", action="store_true",
                   help="first ask bridges with [fleet] live_stats to publish their statistics now")
    p.add_argument("--no-publish", action="store_true", help="write the candidate, publish nothing")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    _rollout_args(p)
    p.set_defaults(func=_merge)

    p = commands.add_parser("rollout", help="publish a model built elsewhere, with a rollout")
    _broker_args(p)
    p.add_argument("--file", required=True, type=Path, help="the ONNX model to publish")
    _rollout_args(p)
    p.set_defaults(func=_rollout_file)
