/**
 * src/repo is the pure part of atmirror: bytes in, verdicts out. It may not
 * import networking (helia, libp2p, HTTP, sockets) or logging that comes with
 * it, directly or through a package it uses, nor reach out of src/repo except
 * to src/errors.ts. This test reads the sources, so a new import fails here
 * rather than in review.
 */
import assert from 'node:assert/strict'
import { readdirSync, readFileSync } from 'node:fs'
import { dirname, join, relative, resolve, sep } from 'node:path'
import { describe, it } from 'node:test'

const root = resolve(import.meta.dirname, '..', '..')
const repoDir = join(root, 'src', 'repo')
const allowedOutside = new Set([join(root, 'src', 'errors.ts')])

/** Bare specifiers src/repo may never import (matched on the package name). */
const FORBIDDEN_PACKAGES: Array<[RegExp, string]> = [
  [/^helia$/, 'helia'],
  [/^@helia\//, 'helia'],
  [/^libp2p$/, 'libp2p'],
  [/^@libp2p\//, 'libp2p'],
  [/^@chainsafe\/libp2p-/, 'libp2p'],
  [/^(node:)?(http|https|http2|net|tls|dgram|dns|child_process)$/, 'network or process I/O'],
  [/^undici$/, 'HTTP client'],
  [/^(node-fetch|cross-fetch|axios|got|ky)$/, 'HTTP client'],
  [/^ws$/, 'sockets']
]

/** Global network APIs that must not be used in src/repo. */
const FORBIDDEN_GLOBALS = /\b(fetch|WebSocket|XMLHttpRequest|EventSource)\s*\(/

/** Every module specifier in a source text: static and type imports, re-exports, `import()`, `require()`. */
function specifiers (source: string): string[] {
  const text = stripComments(source)
  const found: string[] = []
  const patterns = [
    /\b(?:import|export)\s+(?:type\s+)?[^'";]*?\bfrom\s*['"]([^'"]+)['"]/g,
    /\bimport\s*['"]([^'"]+)['"]/g,
    /\bimport\s*\(\s*['"]([^'"]+)['"]\s*\)/g,
    /\brequire\s*\(\s*['"]([^'"]+)['"]\s*\)/g
  ]
  for (const pattern of patterns) {
    for (const match of text.matchAll(pattern)) found.push(match[1])
  }
  return found
}

function stripComments (source: string): string {
  return source.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[^:'"`])\/\/.*$/gm, '$1')
}

/** The package name of a bare specifier (`@scope/name/sub` → `@scope/name`). */
function packageName (specifier: string): string {
  const parts = specifier.split('/')
  return specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0]
}

function forbidden (specifier: string): string | undefined {
  for (const [pattern, why] of FORBIDDEN_PACKAGES) {
    if (pattern.test(specifier) || pattern.test(packageName(specifier))) return why
  }
  return undefined
}

/** Why a file's imports break purity (empty when they do not). */
function violations (file: string, source: string): string[] {
  const out: string[] = []
  for (const specifier of specifiers(source)) {
    if (specifier.startsWith('.')) {
      const target = resolve(dirname(file), specifier)
      if (!target.startsWith(repoDir + sep) && !allowedOutside.has(target)) out.push(`${specifier}: reaches out of src/repo`)
      continue
    }
    const why = forbidden(specifier)
    if (why !== undefined) out.push(`${specifier}: ${why}`)
  }
  const global = FORBIDDEN_GLOBALS.exec(stripComments(source))
  if (global !== null) out.push(`uses ${global[1]}()`)
  return out
}

function sourceFiles (dir: string): string[] {
  const out: string[] = []
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) out.push(...sourceFiles(path))
    else if (entry.name.endsWith('.ts')) out.push(path)
  }
  return out.sort()
}

const files = sourceFiles(repoDir)

describe('src/repo is pure', () => {
  it('has sources to check', () => {
    assert.ok(files.length >= 10, `found ${files.length} files`)
    assert.ok(files.some(file => file.endsWith(join('repo', 'verify.ts'))))
  })

  for (const file of files) {
    const name = relative(root, file)
    it(`${name} imports no networking and stays in src/repo`, () => {
      const source = readFileSync(file, 'utf8')
      assert.deepEqual(violations(file, source), [], name)
    })
  }

  it('the packages it imports do not depend on networking themselves', () => {
    const packages = new Set<string>()
    for (const file of files) {
      for (const specifier of specifiers(readFileSync(file, 'utf8'))) {
        if (!specifier.startsWith('.') && !specifier.startsWith('node:')) packages.add(packageName(specifier))
      }
    }
    assert.ok(packages.size > 0)
    const problems: string[] = []
    for (const name of packages) {
      // (read from node_modules: not every package exports its package.json)
      const manifest = JSON.parse(readFileSync(join(root, 'node_modules', name, 'package.json'), 'utf8')) as { dependencies?: Record<string, string> }
      for (const dependency of Object.keys(manifest.dependencies ?? {})) {
        const why = forbidden(dependency)
        if (why !== undefined) problems.push(`${name} depends on ${dependency} (${why})`)
      }
    }
    assert.deepEqual(problems, [])
  })
})

describe('the purity check itself', () => {
  const file = join(repoDir, 'example.ts')
  const cases: Array<[string, string]> = [
    ["import { logger } from '@libp2p/logger'", '@libp2p/logger'],
    ["import type { Helia } from 'helia'", 'helia'],
    ["export { bitswap } from '@helia/bitswap'", '@helia/bitswap'],
    ["import { request } from 'node:http'", 'node:http'],
    ["import https from 'https'", 'https'],
    ["import { connect } from 'node:net'", 'node:net'],
    ["import { fetch } from 'undici'", 'undici'],
    ["const { createLibp2p } = await import('libp2p')", 'libp2p'],
    ["import { resolve } from '../identity/resolver.ts'", 'reaches out of src/repo'],
    ['const res = await fetch(url)', 'fetch()']
  ]
  for (const [source, expected] of cases) {
    it(`catches ${JSON.stringify(source)}`, () => {
      const found = violations(file, source)
      assert.equal(found.length, 1, found.join('; '))
      assert.ok(found[0].includes(expected), found[0])
    })
  }

  it('lets through what the engine may use', () => {
    const source = [
      "import { CID } from 'multiformats/cid'",
      "import { hash } from 'node:crypto'",
      "import { CborDecodeError } from '../errors.ts'",
      "import { keyHeight } from './mst/key.ts'",
      '// a comment that mentions fetch(url) and libp2p',
      '/** import { x } from "@libp2p/logger" */'
    ].join('\n')
    assert.deepEqual(violations(file, source), [])
  })
})
