#!/usr/bin/env node
// The `atmirror` command's entry point (package.json "bin"). Plain JavaScript with
// no static imports and no top-level await, so that any Node able to load an ES
// module parses it and gets the one-line answer below instead of a stack trace.
//
// Which code runs:
// - an installed package ships no TypeScript sources (package.json "files"), so
//   this loads the build, dist/bin/atmirror.js;
// - a clone has bin/atmirror.ts next to this file, so this loads the sources,
//   which Node runs with type stripping. A clone never runs dist/, even after
//   `npm run build`: what you edit is what runs (see README).
var need = 22
var found = process.versions.node
if (Number(found.split('.')[0]) < need) {
  process.stderr.write('atmirror needs Node >= ' + need + ' (found v' + found + ')\n')
  process.exitCode = 2
} else {
  import('node:fs').then(function (fs) {
    var source = new URL('atmirror.ts', import.meta.url)
    if (!fs.existsSync(source)) return import('../dist/bin/atmirror.js')
    if (!process.features.typescript) {
      process.stderr.write('atmirror from a clone runs its TypeScript sources: that needs Node >= 22.18 (found v' + found + ')\n')
      process.exitCode = 2
      return
    }
    return import(source.href)
  })
}
