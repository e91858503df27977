'use strict';
// A dependency-free `rm -rf` for the build scripts: works the same on every OS npm runs on.
const { rmSync } = require('node:fs');
for (const dir of process.argv.slice(2)) rmSync(dir, { recursive: true, force: true });
