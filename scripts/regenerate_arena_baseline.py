"""Rule regenerate_arena_baseline: an instruct row's Arena-Hard generations as a baseline-answer file."""

import json
from pathlib import Path

from posttrainbench import benchmarks as bm
from posttrainbench.benchmarks.arenahardwriting import baseline_answer_records
from posttrainbench.io import atomic_write_text, read_json
from posttrainbench.scoring_jobs import samples_path
from posttrainbench.workflow import logged

with logged(snakemake) as log:
    generated = Path(snakemake.input.generated)
    if read_json(generated).get("status") not in ("generated", "ok"):
        raise SystemExit(f"{generated}: the instruct row's generation failed; nothing to regenerate from")
    samples = [json.loads(line) for line in samples_path(generated).read_text().splitlines() if line.strip()]
    records = {r["id"]: r for r in bm.read_test_records(Path(snakemake.input.test).parent)}
    missing = [s["id"] for s in samples if s["id"] not in records]
    if missing or len(samples) != len(records):
        raise SystemExit(f"{len(samples)} generations for {len(records)} items (unknown: {missing[:3]}); "
                         "regenerate from a run without an item limit")
    answers = baseline_answer_records([records[s["id"]] for s in samples], [s["response"] for s in samples])
    atomic_write_text(Path(snakemake.output[0]), "".join(json.dumps(a, ensure_ascii=False) + "\n" for a in answers))
    log.info("wrote %d baseline answers to %s", len(answers), snakemake.output[0])
