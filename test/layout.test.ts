/**
 * Where test and benchmark code lives. Tests mirror src/'s folders and hold only
 * `*.test.ts` files; every helper a test shares is in test/helpers/. What both tests
 * and benchmarks run against (the real PLC + PDS network, repos made by the
 * reference implementation) is in support/, so bench/ never reaches into test/.
 * support/ builds inputs with reference software only, never with atmirror's own
 * code.
 */
import assert from 'node:assert/strict'
import { readFile } from 'node:fs/promises'
import { dirname, join, relative, resolve, sep } from 'node:path'
import { describe, it } from 'node:test'
import { relativeImports, sourceFiles } from './helpers/imports.ts'

const root = resolve(import.meta.dirname, '..')

/** `file → target` for every relative import of the `.ts` files under `dir` whose target starts with one of `prefixes`. */
async function importsInto (dir: string, prefixes: string[]): Promise<string[]> {
  const found: string[] = []
  for (const file of await sourceFiles(join(root, dir))) {
    for (const spec of relativeImports(file, await readFile(file, 'utf8'))) {
      const target = relative(root, resolve(dirname(file), spec)).split(sep).join('/')
      if (prefixes.some(prefix => target.startsWith(prefix))) found.push(`${relative(root, file)} → ${spec}`)
    }
  }
  return found
}

describe('test and bench layout', () => {
  it('test/ holds only test files, outside test/helpers/ and test/vectors/', async () => {
    const strays = (await sourceFiles(join(root, 'test')))
      .map(file => relative(root, file).split(sep).join('/'))
      .filter(file => !file.endsWith('.test.ts') && !file.startsWith('test/helpers/') && !file.startsWith('test/vectors/'))
    assert.deepEqual(strays, [])
  })

  it('test/helpers/ holds no tests', async () => {
    const tests = (await sourceFiles(join(root, 'test', 'helpers'))).filter(file => file.endsWith('.test.ts'))
    assert.deepEqual(tests, [])
  })

  it('bench/ imports nothing from test/', async () => {
    assert.deepEqual(await importsInto('bench', ['test/']), [])
  })

  it('support/ imports nothing from test/, bench/ or src/', async () => {
    assert.deepEqual(await importsInto('support', ['test/', 'bench/', 'src/']), [])
  })
})
