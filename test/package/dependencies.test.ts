/**
 * What the package imports, it declares: every package that src/ or bin/ imports
 * (type-only imports too, since they end up in the shipped .d.ts) is in
 * `dependencies`. A package that is only there because something else depends on
 * it (`interface-store` came with helia) can vanish with any update of that
 * something else.
 */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { builtinModules } from 'node:module'
import { readFile } from 'node:fs/promises'
import { join, relative } from 'node:path'
import { moduleSpecifiers, sourceFiles } from '../helpers/imports.ts'

const root = join(import.meta.dirname, '..', '..')

describe('declared dependencies', () => {
  it('src/ and bin/ import only Node built-ins, their own files and packages in dependencies', async () => {
    const pkg = JSON.parse(await readFile(join(root, 'package.json'), 'utf8'))
    const declared = new Set(Object.keys(pkg.dependencies))
    const undeclared: string[] = []
    const used = new Set<string>()
    for (const file of [...await sourceFiles(join(root, 'src')), ...await sourceFiles(join(root, 'bin'))]) {
      for (const spec of moduleSpecifiers(file, await readFile(file, 'utf8'))) {
        if (spec.startsWith('.') || spec.startsWith('node:') || builtinModules.includes(spec)) continue
        const name = spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]
        used.add(name)
        if (!declared.has(name)) undeclared.push(`${relative(root, file)}: ${spec}`)
      }
    }
    assert.deepEqual(undeclared, [])
    // and nothing declared goes unused (a dependency every user downloads)
    assert.deepEqual([...declared].filter(name => !used.has(name)), [])
  })
})
