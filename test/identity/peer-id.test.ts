import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, createPublicKey } from 'node:crypto'
import { publicKeyFromRaw, publicKeyToProtobuf } from '@libp2p/crypto/keys'
import { isPeerId, type PublicKey as Libp2pPublicKey } from '@libp2p/interface'
import { peerIdFromPublicKey, peerIdFromString } from '@libp2p/peer-id'
import { base58btc } from 'multiformats/bases/base58'
import { libp2pPublicKey, libp2pPublicKeyProtobuf, peerIdForKey, peerIdMultihash } from '../../src/identity/peer-id.ts'
import { parseDidKey } from '../../src/repo/keys.ts'
// Keys from atproto-interop-tests crypto/w3c_didkey_K256.json and w3c_didkey_P256.json.
// The expected values are the fixed vectors of docs/PROTOCOL.md.
const K256 = {
  didKey: 'did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme',
  protobuf: '0802122103874c15c7fda20e539c6e5ba573c139884c351188799f5458b4b41f7924f235cd',
  peerId: '16Uiu2HAmMm8gPJGarr6Jjc5peoNCuWRY5R29N4D6BtNo7MjW1CUL',
  cid: 'bafzaajiiaijcca4hjqk4p7ncbzjzy3s3uvz4comijq2rdcdzt5kfrnfud54sj4rvzu'
}
const P256 = {
  didKey: 'did:key:zDnaeTiq1PdzvZXUaMdezchcMJQpBdH2VN4pgrrEhMCCbmwSb',
  protobuf: '0803125b3059301306072a8648ce3d020106082a8648ce3d0301070342000430e4d86041888fcce87bc49a07f35e25612425a2545aafa08b649c981cfa81042879a18fb7de8adf7cac8b6c5225ebbccd018046d2c783a91ac8a49c3cd6ed9a',
  peerId: 'QmXAmSms9axwaWSN6rEDNjuoekgqRTZG5brqpBwMikiFtb',
  cid: 'bafzbeiedgd6yewncilivofiu6os5zigo5m3uoou54ofpafnnb4abiixima'
}

describe('peerIdForKey', () => {
  it('k256 vector: identity multihash of the secp256k1 protobuf', () => {
    const key = parseDidKey(K256.didKey)
    assert.equal(Buffer.from(libp2pPublicKeyProtobuf(key)).toString('hex'), K256.protobuf)
    const peerId = peerIdForKey(key)
    assert.equal(peerId.toString(), K256.peerId)
    assert.equal(peerId.toCID().toString(), K256.cid)
    assert.equal(peerId.toMultihash().code, 0x00)
    assert.equal(peerId.type, 'secp256k1')
  })

  it('k256 PeerID carries the same key libp2p derives', () => {
    const key = parseDidKey(K256.didKey)
    const peerId = peerIdFromString(K256.peerId)
    assert.ok(peerId.publicKey?.equals(libp2pPublicKey(key)))
  })

  it('p256 vector: sha2-256 multihash of the ECDSA (SubjectPublicKeyInfo) protobuf', () => {
    const key = parseDidKey(P256.didKey)
    assert.equal(Buffer.from(libp2pPublicKeyProtobuf(key)).toString('hex'), P256.protobuf)
    const peerId = peerIdForKey(key)
    assert.equal(peerId.toString(), P256.peerId)
    assert.equal(peerId.toCID().toString(), P256.cid)
    assert.equal(peerId.toMultihash().code, 0x12)
    assert.equal(JSON.stringify({ peerId }), JSON.stringify({ peerId: P256.peerId }))
  })

  it('p256 PeerID is of type ECDSA and carries its libp2p ECDSA key', () => {
    const key = parseDidKey(P256.didKey)
    const peerId = peerIdForKey(key)
    assert.equal(peerId.type, 'ECDSA')
    assert.equal(peerId.publicKey.type, 'ECDSA')
    assert.ok(peerId.publicKey.equals(libp2pPublicKey(key)))
    assert.ok(isPeerId(peerId))
  })

  it('p256 key data is the SubjectPublicKeyInfo OpenSSL writes, and the PeerID its hashed protobuf', () => {
    const key = parseDidKey(P256.didKey)
    const libp2pKey = libp2pPublicKey(key)
    assert.equal(libp2pKey.type, 'ECDSA')
    // Independent of atmirror's DER: node's OpenSSL encodes the same point.
    const spki = createPublicKey({ key: libp2pKey.jwk as import('node:crypto').JsonWebKey, format: 'jwk' }).export({ type: 'spki', format: 'der' })
    assert.deepEqual(Buffer.from(libp2pKey.raw), spki)
    const protobuf = Buffer.concat([Buffer.from([0x08, 0x03, 0x12, spki.length]), spki])
    const multihash = Buffer.concat([Buffer.from([0x12, 0x20]), createHash('sha256').update(protobuf).digest()])
    assert.equal(base58btc.encode(multihash).slice(1), P256.peerId)
    assert.deepEqual(Buffer.from(libp2pKey.raw.subarray(-65)), Buffer.from(P256.protobuf, 'hex').subarray(-65))
  })

  for (const [curve, vector] of [['k256', K256], ['p256', P256]] as const) {
    it(`${curve}: one definition — the key object, the PeerID and the protobuf agree`, () => {
      const key = parseDidKey(vector.didKey)
      const libp2pKey = libp2pPublicKey(key)
      const peerId = peerIdForKey(key)
      const expected = peerIdMultihash(libp2pPublicKeyProtobuf(key)).bytes
      assert.deepEqual(peerId.toMultihash().bytes, expected)
      assert.deepEqual(libp2pKey.toMultihash().bytes, expected)
      assert.equal(libp2pKey.toCID().toString(), vector.cid)
      assert.equal(libp2pKey.toString(), vector.peerId)
      // js-libp2p's own protobuf writer, given our key object, writes the vector's protobuf.
      assert.equal(Buffer.from(publicKeyToProtobuf(libp2pKey as Libp2pPublicKey)).toString('hex'), vector.protobuf)
      // js-libp2p parses the PeerID string back to the same multihash.
      const parsed = peerIdFromString(peerId.toString())
      assert.ok(peerId.equals(parsed))
      assert.ok(parsed.equals(peerId))
      assert.ok(peerId.equals(peerId.toString()))
      assert.ok(peerId.equals(expected))
    })
  }

  it('k256: equals js-libp2p peerIdFromPublicKey of the same key, type secp256k1', () => {
    const key = parseDidKey(K256.didKey)
    const fromLibrary = peerIdFromPublicKey(libp2pPublicKey(key) as Libp2pPublicKey)
    assert.ok(peerIdForKey(key).equals(fromLibrary))
    assert.equal(fromLibrary.type, 'secp256k1')
    assert.equal(peerIdForKey(key).type, 'secp256k1')
  })

  // Why the P-256 PeerId is built by atmirror: js-libp2p refuses ECDSA keys here, and
  // its own ECDSA key identity-hashes a 91-byte non-SubjectPublicKeyInfo protobuf.
  // If this starts passing, js-libp2p gained ECDSA PeerIds: compare and switch to it.
  it('p256: js-libp2p peerIdFromPublicKey still refuses ECDSA keys (UnsupportedKeyTypeError)', () => {
    const key = parseDidKey(P256.didKey)
    const libraryKey = publicKeyFromRaw(Buffer.from('3055020101a00a06082a8648ce3d030107a144034200' + P256.protobuf.slice(-130), 'hex'))
    assert.equal(libraryKey.type, 'ECDSA')
    assert.ok(libp2pPublicKey(key).equals(libraryKey))
    assert.throws(() => peerIdFromPublicKey(libraryKey), { name: 'UnsupportedKeyTypeError' })
    assert.throws(() => peerIdFromPublicKey(libp2pPublicKey(key) as Libp2pPublicKey), { name: 'UnsupportedKeyTypeError' })
    assert.notDeepEqual(libraryKey.toMultihash().bytes, peerIdForKey(key).toMultihash().bytes)
  })

  it('is deterministic and differs between keys', () => {
    const a = peerIdForKey(parseDidKey(K256.didKey))
    const b = peerIdForKey(parseDidKey('did:key:zQ3shtxV1FrJfhqE1dvxYRcCknWNjHc3c5X1y3ZSoPDi2aur2'))
    assert.ok(a.equals(peerIdForKey(parseDidKey(K256.didKey))))
    assert.ok(!a.equals(b))
    const p = peerIdForKey(parseDidKey(P256.didKey))
    assert.ok(p.equals(peerIdForKey(parseDidKey(P256.didKey))))
    assert.ok(!p.equals(a))
    assert.ok(!p.equals(undefined))
  })

  it('rejects a key that is not a point on its curve', () => {
    for (const type of ['p256', 'k256'] as const) {
      const key = { type, compressed: new Uint8Array(33).fill(7) }
      assert.throws(() => peerIdForKey(key), { name: 'InvalidKeyError' }, type)
    }
  })
})
