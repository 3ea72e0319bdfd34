import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { RENDEZVOUS_PREFIX, rendezvousCid, rendezvousPreimage } from '../../src/identity/rendezvous.ts'

// The fixed vectors of docs/PROTOCOL.md.
const VECTORS = [
  { did: 'did:plc:z72i7hdynmk6r22z27h6tvur', sha256: 'a957c7722655faccd940fa074896eecc89e1eeaf81eef1ddaf6b74278ad5be47', cid: 'bafkreifjk7dxejsv7lgnsqh2a5ejn3wmrhq65l4b53y53l3loqtyvvn6i4' },
  { did: 'did:plc:ewvi7nxzyoun6zhxrhs64oiz', sha256: '2ed39408e48b6e61ea6d358fc63284437fe18e39bdd8b9b4b620904395e55a01', cid: 'bafkreibo2okarzelnzq6u3jvr7ddfbcdp7qy4on53c43jnrasbbzlzk2ae' },
  { did: 'did:web:blueskyweb.xyz', sha256: 'f9c68cdb1026f4f3866319b2cd41b09d0600749b542e82381d05689c120028b0', cid: 'bafkreihzy2gnwebg6tzymyyzwlgudme5ayahjg2uf2bdqhifncobeabiwa' }
]

describe('rendezvousCid', () => {
  for (const vector of VECTORS) {
    it(vector.did, () => {
      const preimage = rendezvousPreimage(vector.did)
      assert.equal(new TextDecoder().decode(preimage), `/atmirror/rendezvous/1/${vector.did}`)
      assert.equal(createHash('sha256').update(preimage).digest('hex'), vector.sha256)
      const cid = rendezvousCid(vector.did)
      assert.equal(cid.toString(), vector.cid)
      assert.equal(cid.version, 1)
      assert.equal(cid.code, 0x55)
      assert.equal(cid.multihash.code, 0x12)
    })
  }

  it('uses the versioned prefix', () => {
    assert.equal(RENDEZVOUS_PREFIX, '/atmirror/rendezvous/1/')
  })

  it('is case-sensitive like DIDs', () => {
    assert.notEqual(rendezvousCid('did:web:Blueskyweb.xyz').toString(), rendezvousCid('did:web:blueskyweb.xyz').toString())
  })

  it('rejects a string that is not a DID', () => {
    for (const bad of ['alice.bsky.social', 'did:plc:', 'DID:plc:z72i7hdynmk6r22z27h6tvur', '']) {
      assert.throws(() => rendezvousCid(bad), { name: 'InvalidIdentifierError' })
    }
  })
})
