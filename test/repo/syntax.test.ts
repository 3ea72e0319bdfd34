import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import {
  ensureValidCid, ensureValidDid, ensureValidHandle, ensureValidRecordPath, isValidCidString, isValidDid, isValidHandle,
  isValidNsid, isValidRecordKey, isValidRecordPath, isValidTid, parseRecordPath
} from '../../src/repo/syntax.ts'

const SYNTAX = join(import.meta.dirname, '../vectors/atproto-interop-tests/syntax')

/** Non-comment, non-blank lines of a vector file, with their line numbers. */
function vectorLines (name: string): Array<{ line: number, value: string }> {
  const out: Array<{ line: number, value: string }> = []
  readFileSync(join(SYNTAX, name), 'utf8').split('\n').forEach((text, i) => {
    // Lines are taken verbatim (some invalid cases have leading or trailing spaces).
    if (text.trim() === '' || text.startsWith('#')) return
    out.push({ line: i + 1, value: text })
  })
  return out
}

function label (value: string): string {
  return value.length > 60 ? `${JSON.stringify(value.slice(0, 40))}… (${value.length} chars)` : JSON.stringify(value)
}

const cases: Array<[string, string, (v: unknown) => boolean]> = [
  ['did', 'DID', isValidDid],
  ['handle', 'handle', isValidHandle],
  ['nsid', 'NSID', isValidNsid],
  ['recordkey', 'record key', isValidRecordKey],
  ['tid', 'TID', isValidTid],
  ['cid', 'CID string', isValidCidString]
]

for (const [file, what, check] of cases) {
  describe(`${what} syntax (interop vectors)`, () => {
    for (const { line, value } of vectorLines(`${file}_syntax_valid.txt`)) {
      it(`valid line ${line}: ${label(value)}`, () => {
        assert.equal(check(value), true, `${file}_syntax_valid.txt:${line} should be a valid ${what}`)
      })
    }
    for (const { line, value } of vectorLines(`${file}_syntax_invalid.txt`)) {
      it(`invalid line ${line}: ${label(value)}`, () => {
        assert.equal(check(value), false, `${file}_syntax_invalid.txt:${line} should not be a valid ${what}`)
      })
    }
  })
}

describe('record paths', () => {
  it('accepts collection/rkey', () => {
    assert.equal(isValidRecordPath('app.bsky.feed.post/3jzfcijpj2z2a'), true)
    assert.deepEqual(parseRecordPath('app.bsky.actor.profile/self'), { collection: 'app.bsky.actor.profile', rkey: 'self' })
  })

  for (const [rpath, reason] of [
    ['app.bsky.feed.post', 'no "/"'],
    ['app.bsky.feed.post/', 'rkey'],
    ['/3jzfcijpj2z2a', 'collection'],
    ['app.bsky.feed.post/a/b', 'rkey'],
    ['app.bsky.feed.post/..', 'rkey'],
    ['not-an-nsid/self', 'collection'],
    ['app.bsky.feed.post/with space', 'rkey']
  ]) {
    it(`rejects ${JSON.stringify(rpath)} naming the ${reason}`, () => {
      assert.equal(isValidRecordPath(rpath), false)
      assert.throws(() => ensureValidRecordPath(rpath), (err: Error) => {
        assert.equal(err.name, 'InvalidRecordPathError')
        assert.match(err.message, new RegExp(reason))
        return true
      })
    })
  }

  it('rejects non-strings without throwing from isValid*', () => {
    for (const value of [undefined, null, 42, {}, ['a']]) {
      assert.equal(isValidRecordPath(value), false)
      assert.equal(isValidDid(value), false)
      assert.equal(isValidHandle(value), false)
      assert.equal(isValidNsid(value), false)
      assert.equal(isValidRecordKey(value), false)
      assert.equal(isValidTid(value), false)
      assert.equal(isValidCidString(value), false)
    }
  })
})

describe('ensureValid*', () => {
  it('ensureValidDid throws InvalidIdentifierError for a bad DID', () => {
    ensureValidDid('did:plc:7iza6de2dwap2sbkpav7c6c6')
    assert.throws(() => ensureValidDid('did:PLC:x'), { name: 'InvalidIdentifierError' })
  })

  it('ensureValidCid throws UnsupportedCidError for a bad CID string, naming it', () => {
    ensureValidCid('bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm')
    assert.throws(() => { ensureValidCid('cid:bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm') }, (err: Error & { cid: string }) => {
      assert.equal(err.name, 'UnsupportedCidError')
      assert.equal(err.cid, '"cid:bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"')
      return true
    })
    assert.throws(() => { ensureValidCid('QmbWqxBEKC3P8tqsKc98xmWNzrzDtRLMiMPL8wBuTGsMnR') }, { name: 'UnsupportedCidError', message: /CIDv0/ })
    assert.throws(() => { ensureValidCid(`b${'a'.repeat(256)}`) }, { name: 'UnsupportedCidError' })
  })

  it('ensureValidHandle throws InvalidIdentifierError for a bad handle', () => {
    ensureValidHandle('alice.test')
    assert.throws(() => ensureValidHandle('alice'), { name: 'InvalidIdentifierError' })
  })
})
