import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { P256Keypair, Secp256k1Keypair } from '@atproto/crypto'
import { signCommit, verifyCommitSig } from '@atproto/repo'
import * as dagCbor from '@ipld/dag-cbor'
import { p256 } from '@noble/curves/nist.js'
import { secp256k1 } from '@noble/curves/secp256k1.js'
import { encode as cborgEncode } from 'cborg'
import { encodeCbor } from '../../src/repo/cbor.ts'
import { cidForBytes, RAW } from '../../src/repo/cid.ts'
import { decodeCommit, encodeCommit, unsignedCommitBytes, verifyCommitSignature, type Commit, type UnsignedCommit } from '../../src/repo/commit.ts'
import { formatDidKey, parseDidKey, publicKeyFromBytes, type KeyType, type PublicKey } from '../../src/repo/keys.ts'

const curves = { k256: secp256k1, p256 }
const DID = 'did:plc:7iza6de2dwap2sbkpav7c6c6'
const REV = '3jzfcijpj2z2a'
const dataCid = cidForBytes(encodeCbor({ e: [], l: null }))
const otherCid = cidForBytes(encodeCbor({ e: [], l: dataCid }))

interface Signer { type: KeyType, secret: Uint8Array, key: PublicKey }

function signer (type: KeyType): Signer {
  const curve = curves[type]
  const secret = curve.utils.randomSecretKey()
  return { type, secret, key: publicKeyFromBytes(type, curve.getPublicKey(secret, true)) }
}

function sign (s: Signer, unsigned: UnsignedCommit): Commit {
  const sig = curves[s.type].sign(unsignedCommitBytes(unsigned), s.secret, { prehash: true, lowS: true })
  return { ...unsigned, sig }
}

function unsigned (overrides: Partial<UnsignedCommit> = {}): UnsignedCommit {
  return { did: DID, version: 3, data: dataCid, rev: REV, prev: null, ...overrides }
}

function errorNamed (name: string, ...fragments: string[]) {
  return (err: Error): boolean => {
    assert.equal(err.name, name, err.message)
    for (const fragment of fragments) assert.ok(err.message.includes(fragment), `"${err.message}" should mention ${fragment}`)
    return true
  }
}

for (const type of ['k256', 'p256'] as KeyType[]) {
  describe(`commits signed with ${type}`, () => {
    const s = signer(type)
    const commit = sign(s, unsigned())
    const bytes = encodeCommit(commit)
    const cid = cidForBytes(bytes)

    it('decodes exactly the signed fields and verifies', () => {
      const decoded = decodeCommit(bytes, cid)
      assert.deepEqual(decoded, commit)
      verifyCommitSignature(decoded, s.key, { cid })
    })

    it('decodes a commit with a prev link', () => {
      const withPrev = sign(s, unsigned({ prev: otherCid }))
      const decoded = decodeCommit(encodeCommit(withPrev))
      assert.ok(decoded.prev?.equals(otherCid))
      verifyCommitSignature(decoded, s.key)
    })

    const tampered: Array<[string, Partial<Commit>]> = [
      ['did', { did: 'did:plc:aaaaaaaaaaaaaaaaaaaaaaaa' }],
      ['data', { data: otherCid }],
      ['rev', { rev: '3jzfcijpj2z2b' }],
      ['prev', { prev: otherCid }]
    ]
    for (const [field, change] of tampered) {
      it(`rejects a commit whose ${field} changed after signing (CommitSignatureError)`, () => {
        const changed = decodeCommit(encodeCommit({ ...commit, ...change }))
        assert.throws(() => verifyCommitSignature(changed, s.key, { cid }), errorNamed('CommitSignatureError', `did=${changed.did}`, `rev=${changed.rev}`, `cid=${cid}`))
      })
    }

    it('rejects a flipped signature byte (CommitSignatureError)', () => {
      const sig = commit.sig.slice()
      sig[10] ^= 1
      assert.throws(() => verifyCommitSignature({ ...commit, sig }, s.key), errorNamed('CommitSignatureError'))
    })

    it('rejects the high-S twin of the signature (CommitSignatureError)', () => {
      const curve = curves[type]
      const low = curve.Signature.fromBytes(commit.sig, 'compact')
      const high = new curve.Signature(low.r, curve.Point.CURVE().n - low.s).toBytes('compact')
      assert.throws(() => verifyCommitSignature({ ...commit, sig: high }, s.key), errorNamed('CommitSignatureError'))
    })

    it('rejects a commit re-signed with another key (CommitSignatureError)', () => {
      const resigned = sign(signer(type), unsigned())
      assert.throws(() => verifyCommitSignature(decodeCommit(encodeCommit(resigned)), s.key), errorNamed('CommitSignatureError'))
    })
  })
}

describe('interop with @atproto/repo signing', () => {
  for (const [type, create] of [['k256', () => Secp256k1Keypair.create()], ['p256', () => P256Keypair.create()]] as const) {
    it(`verifies a ${type} commit signed by @atproto/repo, and the reference verifies ours`, async () => {
      const keypair = await create()
      const reference = await signCommit(unsigned() as never, keypair)
      const decoded = decodeCommit(encodeCommit({ ...unsigned(), sig: reference.sig }))
      const key = parseDidKey(keypair.did())
      assert.equal(key.type, type)
      verifyCommitSignature(decoded, key)

      const ours = signer(type)
      const signed = sign(ours, unsigned())
      assert.equal(await verifyCommitSig(signed as never, formatDidKey(ours.key)), true)
    })
  }
})

describe('malformed commits', () => {
  const s = signer('k256')
  const good = sign(s, unsigned()) as unknown as Record<string, unknown>
  const without = (key: string): Record<string, unknown> => Object.fromEntries(Object.entries(good).filter(([k]) => k !== key))

  const cases: Array<[string, Record<string, unknown> | unknown, string]> = [
    ['version 2', { ...good, version: 2 }, 'version'],
    ['version as a string', { ...good, version: '3' }, 'version'],
    ['missing prev (must be present, even if null)', without('prev'), 'missing field prev'],
    ['missing sig', without('sig'), 'missing field sig'],
    ['missing data', without('data'), 'missing field data'],
    ['missing did', without('did'), 'missing field did'],
    ['missing rev', without('rev'), 'missing field rev'],
    ['missing version', without('version'), 'missing field version'],
    ['an unexpected extra field', { ...good, extra: 'x' }, 'unexpected field "extra"'],
    ['a DID that is not a DID', { ...good, did: 'plc:abc' }, 'did is not a valid DID'],
    ['a DID that is a number', { ...good, did: 42 }, 'did is number 42'],
    ['a rev that is not a TID', { ...good, rev: '2024-01-01' }, 'rev is not a valid TID'],
    ['a rev that is bytes', { ...good, rev: new Uint8Array(13) }, 'rev is 13 bytes'],
    ['data that is a string', { ...good, data: dataCid.toString() }, 'data is a string'],
    ['data that is a raw-codec CID', { ...good, data: cidForBytes(new Uint8Array([1]), RAW) }, 'not a CIDv1 DAG-CBOR'],
    ['prev that is a string', { ...good, prev: 'bafy' }, 'prev is a string'],
    ['prev that is false', { ...good, prev: false }, 'prev is boolean false'],
    ['a 63-byte sig', { ...good, sig: (good.sig as Uint8Array).subarray(0, 63) }, 'sig is 63 bytes'],
    ['a 72-byte (DER-sized) sig', { ...good, sig: new Uint8Array(72) }, 'sig is 72 bytes'],
    ['a sig that is a string', { ...good, sig: 'sig' }, 'sig is a string'],
    ['an array instead of a map', [good.did, good.rev], 'not a map'],
    ['a CID instead of a map', dataCid, 'not a map']
  ]
  for (const [name, value, fragment] of cases) {
    it(`rejects ${name} (CommitInvalidError)`, () => {
      const bytes = encodeCbor(value)
      assert.throws(() => decodeCommit(bytes, cidForBytes(bytes)), errorNamed('CommitInvalidError', fragment, `cid=${cidForBytes(bytes)}`))
    })
  }

  it('names the did and rev in structural errors when they are readable', () => {
    const bytes = encodeCbor({ ...good, version: 2 })
    assert.throws(() => decodeCommit(bytes), errorNamed('CommitInvalidError', `did=${DID}`, `rev=${REV}`))
  })

  it('rejects a commit whose map keys are not in canonical order (CborDecodeError)', () => {
    const reversed = cborgEncode(good, { ...dagCbor.encodeOptions, mapSorter: (a: any, b: any) => (a[0].value < b[0].value ? 1 : -1) })
    assert.throws(() => decodeCommit(reversed), errorNamed('CborDecodeError', 'canonical order'))
  })

  it('rejects a commit with trailing bytes (CborDecodeError)', () => {
    const bytes = encodeCommit(good as unknown as Commit)
    assert.throws(() => decodeCommit(new Uint8Array([...bytes, 0])), errorNamed('CborDecodeError'))
  })

  it('rejects a commit with a float (CborDecodeError)', () => {
    assert.throws(() => decodeCommit(encodeCbor({ ...good, version: 3.5 })), errorNamed('CborDecodeError', 'float'))
  })

  it('unsignedCommitBytes covers only the five unsigned fields', () => {
    const commit = good as unknown as Commit
    const withExtra = { ...commit, extra: 1 } as unknown as Commit
    assert.deepEqual(unsignedCommitBytes(withExtra), unsignedCommitBytes(commit))
    const { sig: _sig, ...rest } = commit
    assert.deepEqual(unsignedCommitBytes(commit), encodeCbor(rest))
  })
})
