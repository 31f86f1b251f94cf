"""Trainer worker: buffer confident teacher answers per domain, train a SmolLM2 student, publish its version."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from selfevolve.evolution import hierarchy as hier
from selfevolve.models.catalogue import Catalogue
from selfevolve.wire.codec import Codec
from selfevolve.config import Settings
from selfevolve.distill import buffer
from selfevolve.distill.evaluate import loss_trend
from selfevolve.distill.live import train_round
from selfevolve.errors import DecodeError, SelfEvolveError
from selfevolve.wire.topics import Topics

log = logging.getLogger("selfevolve.trainer")
TEACHER_ROLES = ("teacher", "supervisor")


class Trainer:
    """Joins decisions (prompt, domain), responses (answer) and scores (confidence, metrics) per query."""

    def __init__(self, settings: Settings, catalogue: Catalogue, student: str, steps: int):
        self.settings, self.student, self.steps = settings, student, steps
        teachers = {s.name for s in catalogue.models if s.role in TEACHER_ROLES}
        self.buffer = buffer.initialize(settings.distill_confidence, teachers)
        self.prompts: dict[str, tuple[str, int]] = {}
        self.answers: dict[tuple[str, str], str] = {}
        self.versions = 0

    def observe(self, kind: str, rec: dict) -> None:
        if kind == "route_decision":
            self.prompts[rec["query_id"]] = (json.loads(rec["plan"])["text"] if rec["plan"] else "", rec["domain"])
        elif kind == "inference_response" and rec["ok"]:
            self.answers[(rec["query_id"], rec["model"])] = rec["answer"]
        elif kind == "score":
            prompt, _ = self.prompts.get(rec["query_id"], ("", -1))
            answer = self.answers.pop((rec["query_id"], rec["model"]), "")
            self.buffer = buffer.agg(self.buffer, {
                "query_id": rec["query_id"], "model": rec["model"], "domain": str(rec["domain"]),
                "prompt": prompt, "answer": answer, "confidence": rec["confidence"],
                "metrics": [rec["relevance"], rec["correctness"], rec["completeness"], rec["clarity"]]})

    def due(self, domain: str | None = None) -> str | None:
        """The domain to train now: the one asked for, else any whose buffer holds B answers."""
        sizes = buffer.result(self.buffer)
        if domain is not None:
            return domain if sizes.get(domain) else None
        return next((d for d, n in sizes.items() if n >= self.settings.distill_buffer), None)

    def train(self, domain: str) -> list[dict]:
        self.buffer, items = buffer.drain(self.buffer, domain)
        self.versions += 1
        path, summary = train_round(self.settings, domain, items, self.versions, self.steps)
        log.info("trained %s for domain %s: %s", self.student, domain, summary)
        now = int(time.time() * 1000)
        why = (f"distilled from {summary['examples']} teacher answers in {summary['steps']} steps, "
               f"loss {summary['first_loss']:.3f}->{summary['last_loss']:.3f} "
               f"({loss_trend([summary['first_loss'], summary['last_loss']])}), {summary['wall_s']:.0f}s")
        return [hier.event("activate", self.student, int(domain), None, "student", why, now),
                hier.event("version", self.student, int(domain), "student", "student", why, now,
                           checkpoint=str(path))]


async def run(settings: Settings, student: str, steps: int, stop: asyncio.Event) -> None:
    from streams.kafka_io import client_options

    topics = Topics.from_settings(settings)
    codec = Codec.from_dir()
    trainer = Trainer(settings, Catalogue.load(settings.catalogue), student, steps)
    consumer = AIOKafkaConsumer(topics.route_decisions, topics.inference_responses, topics.scores, topics.spawns,
                                bootstrap_servers=settings.kafka_bootstrap, group_id="selfevolve-trainer",
                                **client_options(settings),
                                auto_offset_reset="earliest", enable_auto_commit=True)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True,
                                **client_options(settings))
    await consumer.start()
    await producer.start()
    try:
        while not stop.is_set():
            asked: list[str] = []
            for tp, msgs in (await consumer.getmany(timeout_ms=500)).items():
                kind = topics.kind_of(tp.topic)
                for m in msgs:
                    try:
                        rec = codec.decode(kind, m.value)
                    except DecodeError:
                        continue  # the stage that owns the topic dead-letters it
                    if kind == "spawn":
                        if rec["mode"] == "live":
                            asked.append(str(rec["domain"]))
                    else:
                        trainer.observe(kind, rec)
            for domain in [trainer.due(d) for d in asked] + [trainer.due()]:
                if domain is None:
                    continue
                try:
                    events = await asyncio.to_thread(trainer.train, domain)
                except SelfEvolveError as e:
                    log.error("training for domain %s failed: %s", domain, e)
                    continue
                for e in events:
                    await producer.send_and_wait(topics.model_events, key=e["model"].encode(),
                                                 value=codec.encode("model_event", e))
    finally:
        await consumer.stop()
        await producer.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="selfevolve-trainer", description=__doc__)
    ap.add_argument("--student", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        settings = Settings.load()
        from streams.metrics import serve_metrics  # its process metrics (Python's own) on metrics_trainer_port

        serve_metrics(settings, "trainer")
        await run(settings, args.student, args.steps, stop)

    asyncio.run(_main())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
