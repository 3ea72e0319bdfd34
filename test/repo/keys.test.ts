import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { p256 } from '@noble/curves/nist.js'
import { secp256k1 } from '@noble/curves/secp256k1.js'
import { base58btc } from 'multiformats/bases/base58'
import {
  formatDidKey, parseDidKey, parsePublicKeyMultibase, publicKeyEquals, publicKeyFromBytes, publicKeyMultibase,
  verifySignature, type KeyType, type LegacyKeySuite
} from '../../src/repo/keys.ts'

const CRYPTO = join(import.meta.dirname, '../vectors/atproto-interop-tests/crypto')
const readJson = <T>(name: string): T => JSON.parse(readFileSync(join(CRYPTO, name), 'utf8')) as T

interface SignatureFixture {
  comment: string
  messageBase64: string
  algorithm: 'ES256' | 'ES256K'
  didDocSuite: LegacyKeySuite
  publicKeyDid: string
  publicKeyMultibase: string
  signatureBase64: string
  validSignature: boolean
  tags: string[]
}

const b64 = (text: string): Uint8Array => new Uint8Array(Buffer.from(text, 'base64'))
const curves = { k256: secp256k1, p256 }

describe('signature fixtures (interop vectors)', () => {
  for (const fixture of readJson<SignatureFixture[]>('signature-fixtures.json')) {
    it(fixture.comment, () => {
      const key = parseDidKey(fixture.publicKeyDid)
      assert.equal(key.type, fixture.algorithm === 'ES256' ? 'p256' : 'k256')
      // The fixture's publicKeyMultibase is the legacy DID-document form of the same key.
      assert.ok(publicKeyEquals(parsePublicKeyMultibase(fixture.publicKeyMultibase, fixture.didDocSuite), key))
      assert.equal(verifySignature(key, b64(fixture.messageBase64), b64(fixture.signatureBase64)), fixture.validSignature)
    })
  }
})

describe('did:key fixtures (interop vectors)', () => {
  const k256 = readJson<Array<{ privateKeyBytesHex: string, publicDidKey: string }>>('w3c_didkey_K256.json')
  for (const { privateKeyBytesHex, publicDidKey } of k256) {
    it(`K-256 ${publicDidKey}`, () => {
      const compressed = secp256k1.getPublicKey(Buffer.from(privateKeyBytesHex, 'hex'), true)
      const key = publicKeyFromBytes('k256', compressed)
      assert.equal(formatDidKey(key), publicDidKey)
      assert.ok(publicKeyEquals(parseDidKey(publicDidKey), key))
    })
  }
  const p256Cases = readJson<Array<{ privateKeyBytesBase58: string, publicDidKey: string }>>('w3c_didkey_P256.json')
  for (const { privateKeyBytesBase58, publicDidKey } of p256Cases) {
    it(`P-256 ${publicDidKey}`, () => {
      const secret = base58btc.baseDecode(privateKeyBytesBase58)
      const key = publicKeyFromBytes('p256', p256.getPublicKey(secret, true))
      assert.equal(formatDidKey(key), publicDidKey)
      assert.ok(publicKeyEquals(parseDidKey(publicDidKey), key))
    })
  }
})

describe('key forms', () => {
  for (const type of ['k256', 'p256'] as KeyType[]) {
    const curve = curves[type]
    const secret = curve.utils.randomSecretKey()
    const compressed = curve.getPublicKey(secret, true)
    const uncompressed = curve.getPublicKey(secret, false)
    const suite: LegacyKeySuite = type === 'k256' ? 'EcdsaSecp256k1VerificationKey2019' : 'EcdsaSecp256r1VerificationKey2019'

    it(`${type}: Multikey round trip (did:key and publicKeyMultibase)`, () => {
      const key = publicKeyFromBytes(type, compressed)
      const multibase = publicKeyMultibase(key)
      assert.equal(formatDidKey(key), `did:key:${multibase}`)
      assert.ok(publicKeyEquals(parsePublicKeyMultibase(multibase), key))
      assert.ok(publicKeyEquals(parseDidKey(formatDidKey(key)), key))
    })

    it(`${type}: legacy ${suite} with an uncompressed raw key (as the PLC server serves it)`, () => {
      const key = parsePublicKeyMultibase(base58btc.encode(uncompressed), suite)
      assert.equal(key.type, type)
      assert.deepEqual(key.compressed, compressed)
    })

    it(`${type}: legacy ${suite} with a compressed raw key`, () => {
      const key = parsePublicKeyMultibase(base58btc.encode(compressed), suite)
      assert.deepEqual(key.compressed, compressed)
    })

    it(`${type}: verifies its own low-S signature and rejects a tampered message`, () => {
      const key = publicKeyFromBytes(type, compressed)
      const message = new TextEncoder().encode('atmirror')
      const sig = curve.sign(message, secret, { prehash: true, lowS: true })
      assert.equal(verifySignature(key, message, sig), true)
      assert.equal(verifySignature(key, new TextEncoder().encode('atmirroR'), sig), false)
    })

    it(`${type}: rejects the high-S twin of a valid signature`, () => {
      const key = publicKeyFromBytes(type, compressed)
      const message = new TextEncoder().encode('malleable?')
      const low = curve.Signature.fromBytes(curve.sign(message, secret, { lowS: true }), 'compact')
      const high = new curve.Signature(low.r, curve.Point.CURVE().n - low.s).toBytes('compact')
      // Mathematically valid (plain ECDSA accepts it), but atproto requires low-S.
      assert.equal(curve.verify(high, message, compressed, { lowS: false }), true)
      assert.equal(verifySignature(key, message, high), false)
    })

    it(`${type}: rejects a DER signature of a valid signature`, () => {
      const key = publicKeyFromBytes(type, compressed)
      const message = new TextEncoder().encode('der')
      const der = curve.sign(message, secret, { format: 'der' })
      assert.equal(curve.verify(der, message, compressed, { format: 'der' }), true)
      assert.equal(verifySignature(key, message, der), false)
    })

    it(`${type}: rejects signatures of the wrong length or all zeros`, () => {
      const key = publicKeyFromBytes(type, compressed)
      const message = new TextEncoder().encode('x')
      const sig = curve.sign(message, secret)
      assert.equal(verifySignature(key, message, sig.subarray(0, 63)), false)
      assert.equal(verifySignature(key, message, new Uint8Array([...sig, 0])), false)
      assert.equal(verifySignature(key, message, new Uint8Array(64)), false)
    })
  }

  it('a key of one curve does not verify a signature made on the other', () => {
    const message = new TextEncoder().encode('cross')
    const secret = secp256k1.utils.randomSecretKey()
    const sig = secp256k1.sign(message, secret)
    const k = publicKeyFromBytes('k256', secp256k1.getPublicKey(secret))
    assert.equal(verifySignature({ type: 'p256', compressed: p256.getPublicKey(p256.utils.randomSecretKey()) }, message, sig), false)
    assert.equal(verifySignature(k, message, sig), true)
  })
})

// verifySignature checks with OpenSSL; noble's verify (prehash, low-S, compact) is
// the reference it must agree with on every input, valid or not
describe('verifySignature agrees with noble', () => {
  for (const type of ['k256', 'p256'] as const) {
    it(`${type}: 300 signatures, valid, tampered, high-S, out of range`, () => {
      const curve = curves[type]
      const order = curve.Point.Fn.ORDER
      const toBytes = (n: bigint): Uint8Array => Uint8Array.from(Buffer.from(n.toString(16).padStart(64, '0'), 'hex'))
      let valid = 0
      for (let i = 0; i < 300; i++) {
        const secret = curve.utils.randomSecretKey()
        const compressed = curve.getPublicKey(secret, true)
        const key = publicKeyFromBytes(type, compressed)
        const message = Uint8Array.from(Buffer.from(`message ${i} ${Math.random()}`))
        let sig = curve.sign(message, secret)
        const s = BigInt('0x' + Buffer.from(sig.subarray(32)).toString('hex'))
        switch (i % 6) {
          case 1: sig = sig.slice(); sig[i % 64] ^= 1 << (i % 8); break
          case 2: sig = Uint8Array.from([...sig.subarray(0, 32), ...toBytes(order - s)]); break
          case 3: sig = Uint8Array.from([...sig.subarray(0, 32), ...toBytes(0n)]); break
          case 4: sig = Uint8Array.from([...toBytes(order), ...sig.subarray(32)]); break
          case 5: message[0] ^= 1; break
        }
        let expected: boolean
        try {
          expected = curve.verify(sig, message, compressed, { prehash: true, lowS: true, format: 'compact' })
        } catch {
          expected = false
        }
        assert.equal(verifySignature(key, message, sig), expected, `case ${i % 6}, signature ${Buffer.from(sig).toString('hex')}`)
        if (expected) valid++
      }
      assert.equal(valid, 50)
    })
  }
})

describe('malformed keys throw InvalidKeyError', () => {
  const good = formatDidKey(publicKeyFromBytes('k256', secp256k1.getPublicKey(secp256k1.utils.randomSecretKey())))
  const cases: Array<[string, () => unknown]> = [
    ['not a did:key', () => parseDidKey('did:plc:abc')],
    ['did:key without multibase prefix', () => parseDidKey('did:key:' + good.slice(9))],
    ['did:key with invalid base58', () => parseDidKey(good.slice(0, -1) + '0')],
    ['did:key with an unknown multicodec (ed25519)', () => parseDidKey('did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK')],
    ['did:key with a truncated key', () => parseDidKey('did:key:' + base58btc.encode(new Uint8Array([0xe7, 0x01, 2, 1, 2, 3])))],
    ['did:key with an uncompressed key', () => parseDidKey('did:key:' + base58btc.encode(new Uint8Array([0xe7, 0x01, ...secp256k1.getPublicKey(secp256k1.utils.randomSecretKey(), false)])))],
    ['did:key whose point is not on the curve', () => parseDidKey('did:key:' + base58btc.encode(new Uint8Array([0x80, 0x24, 2, ...new Uint8Array(32).fill(0xff)])))],
    ['legacy key with a 64-byte raw key', () => parsePublicKeyMultibase(base58btc.encode(new Uint8Array(64).fill(1)), 'EcdsaSecp256k1VerificationKey2019')],
    ['legacy key with an unknown suite', () => parsePublicKeyMultibase(good.slice(8), 'Ed25519VerificationKey2020' as LegacyKeySuite)],
    ['multibase that is not base58btc', () => parsePublicKeyMultibase('m' + good.slice(9))],
    ['absurdly long multibase', () => parsePublicKeyMultibase('z' + '1'.repeat(10_000))],
    ['verifying with a key of the wrong length', () => verifySignature({ type: 'k256', compressed: new Uint8Array(32) }, new Uint8Array(1), new Uint8Array(64))],
    ['verifying with an unknown key type', () => verifySignature({ type: 'ed25519' as KeyType, compressed: new Uint8Array(33) }, new Uint8Array(1), new Uint8Array(64))]
  ]
  for (const [name, fn] of cases) {
    it(name, () => {
      assert.throws(fn, { name: 'InvalidKeyError' })
    })
  }
})
