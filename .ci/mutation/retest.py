"""Run a finished session's surviving mutants again against the current tests (after new tests
were written for them), one `cosmic-ray mutate-and-test` each, and print which are now killed.
Run from the repository root of a separate clone (it edits the module in place, then restores
it); usage:

    python .ci/mutation/retest.py SESSION.sqlite CONFIG.toml
"""
import json
import subprocess
import sys
import tomllib


def main(session, config):
    with open(config, "rb") as fh:
        command = tomllib.load(fh)["cosmic-ray"]["test-command"]
    dump = subprocess.run(["cosmic-ray", "dump", session], capture_output=True, text=True,
                          check=True).stdout.splitlines()
    survivors = []
    for line in dump:
        item, result = json.loads(line)
        if result and result.get("test_outcome") == "survived":
            for m in item["mutations"]:
                survivors.append((m["module_path"], m["operator_name"], m["occurrence"]))
    killed = 0
    for module, operator, occurrence in survivors:
        out = subprocess.run(["cosmic-ray", "mutate-and-test", module, operator, str(occurrence),
                              command], capture_output=True, text=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        # no-test: the module changed since the session, and this occurrence is no longer there
        # (occurrences are counted per operator: re-init the session to compare like with like)
        outcome = {"killed": "killed", "survived": "survived"}.get(result["test_outcome"],
                                                                  result["worker_outcome"])
        killed += outcome == "killed"
        print(f"{outcome:9} {operator} {occurrence}", flush=True)
    print(f"{killed} of {len(survivors)} survivors killed by the current tests")


if __name__ == "__main__":
    main(*sys.argv[1:3])
