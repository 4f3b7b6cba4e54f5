#!/usr/bin/env bash
# Mutation testing of the permission and state-rule modules (see mutation.cfg), in a scratch
# copy of the work tree: the mutants never touch it. Prints mutmut's results; exits non-zero
# when a mutant survives that is not listed as equivalent in README.md ("Mutation testing").
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${VENV:-$here/.venv}"
work="$(mktemp -d "${TMPDIR:-/tmp}/spe-mutation-XXXXXX")"
# MUTATION_KEEP=1 keeps the scratch copy (to rerun or show single mutants with mutmut there).
if [ -z "${MUTATION_KEEP:-}" ]; then trap 'rm -rf "$work"' EXIT; else echo "scratch copy: $work"; fi
cd "$here"
# The files git knows, as they are in the work tree now (uncommitted edits included).
git ls-files -z --cached --others --exclude-standard \
    | grep -zv '^\(mutants\|var\|test-artifacts\)/' \
    | xargs -0 cp --parents -t "$work" 2>/dev/null || true
cp mutation.cfg "$work/setup.cfg"
rm -f "$work/pyproject.toml.mutmut"
cd "$work"
# mutmut reads [tool.mutmut] from pyproject.toml first; there is none, so setup.cfg is read.
export PATH="$venv/bin:$PATH"
mutmut run --max-children "${MUTATION_JOBS:-2}" || true
mutmut results --all true > results.txt || true
grep -E ': (survived|no tests|timeout|suspicious)' results.txt > surviving.txt || true
echo "mutants: $(grep -c ': ' results.txt || true), killed: $(grep -c ': killed' results.txt || true)"
sed -n '1,200p' surviving.txt
# Equivalent mutants are listed by name in README.md; anything else surviving fails.
unexpected=0
while read -r line; do
    name="${line%%:*}"
    if ! grep -qF "\`$name\`" "$here/README.md"; then
        echo "surviving, not known to be equivalent: $line"
        unexpected=1
    fi
done < surviving.txt
exit "$unexpected"
