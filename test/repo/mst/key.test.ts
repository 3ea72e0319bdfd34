import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { commonPrefixLength, ensureValidMstKey, isValidMstKey, keyHeight } from '../../../src/repo/mst/key.ts'
import { fixtureKeyHeight } from '../../helpers/car-tools.ts'

const vectors = join(import.meta.dirname, '../../vectors/atproto-interop-tests/mst')
const heights = JSON.parse(readFileSync(join(vectors, 'key_heights.json'), 'utf8')) as Array<{ key: string, height: number }>
const prefixes = JSON.parse(readFileSync(join(vectors, 'common_prefix.json'), 'utf8')) as Array<{ left: string, right: string, len: number }>
const exampleKeys = readFileSync(join(vectors, 'example_keys.txt'), 'utf8').split('\n').filter(line => line !== '' && !line.startsWith('#'))

describe('mst keyHeight (atproto-interop-tests mst/key_heights.json)', () => {
  for (const { key, height } of heights) {
    it(`${JSON.stringify(key)} has height ${height}`, () => {
      assert.equal(keyHeight(key), height)
      assert.equal(keyHeight(new TextEncoder().encode(key)), height)
    })
  }
})

describe('mst example keys (atproto-interop-tests mst/example_keys.txt)', () => {
  it('the file lists the keys', () => {
    assert.equal(exampleKeys.length, 156)
  })
  for (const key of exampleKeys) {
    it(`${key} is a valid MST key with a height`, () => {
      assert.equal(isValidMstKey(key), true)
      ensureValidMstKey(key)
      const height = keyHeight(key)
      // (the independent definition in the test fixtures, from node's createHash)
      assert.equal(height, fixtureKeyHeight(key))
      assert.ok(Number.isInteger(height) && height >= 0 && height <= 128)
    })
  }
})

describe('mst keyHeight on many keys', () => {
  /** The spec's definition, written plainly: leading zero bits of the digest, halved. */
  function plainHeight (key: string): number {
    const digest = createHash('sha256').update(key, 'utf8').digest()
    let bits = 0
    for (const byte of digest) {
      if (byte === 0) {
        bits += 8
        continue
      }
      for (let mask = 0x80; (byte & mask) === 0; mask >>= 1) bits++
      break
    }
    return Math.floor(bits / 2)
  }

  it('agrees with the plain definition on 20000 keys of every height seen', () => {
    const seen = new Set<number>()
    for (let i = 0; i < 20000; i++) {
      const key = `app.bsky.feed.post/${i.toString(36)}`
      const height = keyHeight(key)
      assert.equal(height, plainHeight(key), key)
      seen.add(height)
    }
    assert.ok(seen.has(0) && seen.has(1) && seen.has(2) && seen.has(3) && seen.has(4) && seen.has(5), `heights seen: ${[...seen].join(',')}`)
  })
})

describe('mst commonPrefixLength (atproto-interop-tests mst/common_prefix.json)', () => {
  for (const { left, right, len } of prefixes) {
    it(`${JSON.stringify(left)} and ${JSON.stringify(right)} share ${len}`, () => {
      assert.equal(commonPrefixLength(left, right), len)
      const encoder = new TextEncoder()
      assert.equal(commonPrefixLength(encoder.encode(left), encoder.encode(right)), len)
    })
  }

  it('counts UTF-8 bytes for non-ASCII strings', () => {
    // "é" is 0xc3 0xa9 and "è" is 0xc3 0xa8: one shared byte
    assert.equal(commonPrefixLength('aé', 'aè'), 2)
  })
})

describe('mst key validity', () => {
  const valid = [
    'app.bsky.feed.post/3jui7kd54zh2y',
    'k/00',
    'A0/374913',
    'com.example.record/self',
    'a/b:c~d_e-f.g',
    `app.bsky.feed.post/${'a'.repeat(1024 - 'app.bsky.feed.post/'.length)}`
  ]
  const invalid: Array<[string, string]> = [
    ['', 'empty'],
    ['app.bsky.feed.post', 'no slash'],
    ['/3jui7kd54zh2y', 'empty collection'],
    ['app.bsky.feed.post/', 'empty record key'],
    ['app.bsky.feed.post/a/b', 'two slashes'],
    ['app.bsky.feed.post/a b', 'space'],
    ['app.bsky.feed.post/é', 'non-ASCII'],
    ['app.bsky.feed.post/a#b', 'hash sign'],
    ['app.bsky.feed.post/.', 'dot record key'],
    ['app.bsky.feed.post/..', 'dot-dot record key'],
    ['../abc', 'dot-dot collection'],
    [`app.bsky.feed.post/${'a'.repeat(1025 - 'app.bsky.feed.post/'.length)}`, 'longer than 1024']
  ]
  for (const key of valid) {
    it(`accepts ${JSON.stringify(key.length > 40 ? `${key.slice(0, 40)}…` : key)}`, () => {
      assert.equal(isValidMstKey(key), true)
      ensureValidMstKey(key)
    })
  }
  for (const [key, why] of invalid) {
    it(`rejects a key with ${why}`, () => {
      assert.equal(isValidMstKey(key), false)
      assert.throws(() => { ensureValidMstKey(key) }, { name: 'InvalidRecordPathError' })
    })
  }
})
