#!/usr/bin/env bash
# Static checks of the container and Kubernetes files (no Docker engine or cluster
# needed): every manifest validated against the Kubernetes schemas
# (kubernetes-models from npm), the Dockerfile linted (dockerfilelint), and the
# Dockerfile's COPY sources and targets checked against the build.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=${GW_DEPLOY_CHECK_DIR:-$HOME/.cache/gw-deploy-check}
if [ ! -f "$tools/node_modules/kubernetes-models/package.json" ]; then
	mkdir -p "$tools"
	npm install --prefix "$tools" --no-audit --no-fund --silent \
		kubernetes-models@5.1.0 yaml@2 dockerfilelint@1.8.0 >/dev/null
fi
NODE_PATH="$tools/node_modules" node - deploy/k8s/*.yaml <<'JS'
const fs = require("fs");
const YAML = require("yaml");
(async () => {
let bad = 0, n = 0;
const groups = {"v1": "v1", "apps/v1": "apps/v1", "batch/v1": "batch/v1"};
for (const file of process.argv.slice(2)) {
  for (const doc of YAML.parseAllDocuments(fs.readFileSync(file, "utf8"))) {
    if (doc.errors.length) { console.error(`${file}: ${doc.errors[0].message}`); bad++; continue; }
    const obj = doc.toJS();
    if (!obj) continue;
    n++;
    if (obj.kind === "Kustomization") {
      for (const r of obj.resources || [])
        if (!fs.existsSync(`deploy/k8s/${r}`)) { console.error(`${file}: missing resource ${r}`); bad++; }
      continue;
    }
    const dir = groups[obj.apiVersion];
    if (!dir) { console.error(`${file}: unknown apiVersion ${obj.apiVersion}`); bad++; continue; }
    const mod = await import(`${process.env.NODE_PATH}/kubernetes-models/${dir}/${obj.kind}.js`);
    try {
      new mod[obj.kind](obj).validate();
    } catch (e) {
      console.error(`${file}: ${obj.kind}/${obj.metadata && obj.metadata.name}: ${e.message}`);
      bad++;
    }
  }
}
console.log(`deploy-check: ${n} Kubernetes objects, ${bad} invalid`);
process.exit(bad ? 1 : 0);
})();
JS
"$tools/node_modules/.bin/dockerfilelint" deploy/docker/Dockerfile
# Every binary the image copies is a CMake target of that name.
for b in $(sed -n 's|.*/build/\([a-z-]*\)/\([a-z-]*\).*|\2|p' deploy/docker/Dockerfile | sort -u); do
	grep -q "add_executable($b " "$b/CMakeLists.txt" || { echo "deploy-check: Dockerfile copies $b, no such target" >&2; exit 1; }
done
echo "deploy-check: ok"
