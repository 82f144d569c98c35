// dist/cjs holds the CommonJS build: a package.json there tells Node (and TypeScript reading
// the .d.ts files) that its .js files are CommonJS, while the package itself is "type": "module".
import { writeFileSync } from "node:fs";

writeFileSync(new URL("../dist/cjs/package.json", import.meta.url), '{ "type": "commonjs" }\n');
