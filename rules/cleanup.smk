# Once a cell's verdict exists, the bulky files of its workspaces and earlier attempts go (config
# storage.cleanup: keep and remove globs); a record lists the files and bytes removed. The published
# run.json, trace.jsonl, final_model/ and transcript/ are never touched. A local rule: it only deletes
# files on the shared filesystem. Reference rows are not audited and train nothing.


rule cleanup_workspace:
    input:
        verdict="results/judge/{agent}/{model}/{benchmark}/seed{seed}.json",
        run="results/runs/{agent}/{model}/{benchmark}/seed{seed}/run.json",
    output:
        "results/cleanup/{agent}/{model}/{benchmark}/seed{seed}.json",
    log:
        "logs/cleanup/{agent}/{model}/{benchmark}/seed{seed}.log",
    wildcard_constraints:
        agent=POST_TRAINING_AGENT,
    localrule: True
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    params:
        cleanup=config["storage"]["cleanup"],
    script:
        "../scripts/cleanup_workspace.py"
