import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { peerIdFromString } from '@libp2p/peer-id'
import { libp2pPublicKey, libp2pPublicKeyProtobuf, peerIdForKey } from '../../src/identity/peer-id.ts'
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
  })

  it('p256 key converts to a libp2p ECDSA key with the same point', () => {
    const key = parseDidKey(P256.didKey)
    const libp2pKey = libp2pPublicKey(key)
    assert.equal(libp2pKey.type, 'ECDSA')
    const point = Buffer.from(P256.protobuf, 'hex').subarray(-65)
    assert.deepEqual(Buffer.from(libp2pKey.raw.subarray(-65)), point)
  })

  it('is deterministic and differs between keys', () => {
    const a = peerIdForKey(parseDidKey(K256.didKey))
    const b = peerIdForKey(parseDidKey('did:key:zQ3shtxV1FrJfhqE1dvxYRcCknWNjHc3c5X1y3ZSoPDi2aur2'))
    assert.ok(a.equals(peerIdForKey(parseDidKey(K256.didKey))))
    assert.ok(!a.equals(b))
  })

  it('rejects a key that is not a point on its curve', () => {
    const key = { type: 'p256' as const, compressed: new Uint8Array(33).fill(7) }
    assert.throws(() => peerIdForKey(key), { name: 'InvalidKeyError' })
  })
})
