/**
 * did:plc logs from the real PLC directory (support/network.ts: @did-plc/server):
 * accounts the real PDS created and changed (signing key, PDS, rotation keys), a
 * recovery and a tombstone made with @did-plc/lib against the same directory. Each
 * audit log verifies op by op, and what it derives is what the directory serves.
 */
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { Secp256k1Keypair, P256Keypair } from '@atproto/crypto'
import * as plc from '@did-plc/lib'
import * as dagCbor from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import { sha256 } from 'multiformats/hashes/sha2'
import { plcDocument, verifyPlcLog } from '../../src/identity/plc-log.ts'
import { PlcLogKeeper } from '../../src/identity/plc-logs.ts'
import { parseAtprotoDocument } from '../../src/identity/did-document.ts'
import { defaultPolicyFetch } from '../../src/http/policy.ts'
import { startTestNetwork, type TestNetwork } from '../../support/network.ts'

describe('PLC logs from the real directory', () => {
  let net: TestNetwork
  let keeper: PlcLogKeeper
  let client: plc.Client

  async function directory<T> (path: string): Promise<{ status: number, body: T }> {
    const res = await fetch(`${net.plcUrl}${path}`)
    return { status: res.status, body: await res.json() as T }
  }

  before(async () => {
    net = await startTestNetwork()
    keeper = new PlcLogKeeper({ fetch: defaultPolicyFetch({ allowLoopback: true }) }, { plcUrl: net.plcUrl })
    client = new plc.Client(net.plcUrl)
  })

  after(async () => {
    await net?.stop()
  })

  it('a signing-key change, a move to another PDS and a rotation-key change all verify; the derived document is the directory\'s', async () => {
    const account = await net.createAccount('plclog')
    const { didKey } = await net.rotateSigningKey(account)
    const other = await net.addPds()
    await net.migrateAccount(account, other)
    const log = await keeper.fetchLog(account.did)
    assert.equal(log.entries.length, 3, 'genesis, signing key, migration')
    const [genesis, rotated, moved] = log.entries.map(entry => entry.operation) as any[]
    assert.notEqual(rotated.verificationMethods.atproto, genesis.verificationMethods.atproto)
    assert.equal(rotated.verificationMethods.atproto, didKey)
    assert.notDeepEqual(moved.rotationKeys, rotated.rotationKeys)
    assert.equal(moved.services.atproto_pds.endpoint, other.url)
    // what the directory serves, derived from the log alone
    assert.deepEqual(plcDocument(log.data!, { format: 'legacy' }), (await directory(`/${account.did}`)).body)
    assert.deepEqual(log.data, (await directory(`/${account.did}/data`)).body)
    // today's document form says the same to atproto
    const parsed = parseAtprotoDocument(account.did, plcDocument(log.data!), { allowHttpLocalhost: true })
    assert.equal(parsed.pds, other.url)
    assert.equal(parsed.handle, account.handle)
    assert.equal(parsed.didKey, (await other.pds.ctx.actorStore.keypair(account.did)).did())
  })

  it('a recovery by a higher-priority rotation key within 72 h: the directory nullifies, the log verifies', async () => {
    const high = await Secp256k1Keypair.create()
    const low = await P256Keypair.create()
    const signing = await Secp256k1Keypair.create()
    const did = await client.createDid({ signingKey: signing.did(), handle: 'recover.test', pds: 'https://pds.example.test', rotationKeys: [high.did(), low.did()], signer: low })
    const genesis = await client.getLastOp(did) as plc.CompatibleOp
    await client.updatePds(did, low, 'https://hijacked.example.test')
    await client.updateHandle(did, low, 'hijacked.test')
    await client.sendOperation(did, await plc.updatePdsOp(genesis, high, 'https://recovered.example.test'))
    const audit = (await directory<any[]>(`/${did}/log/audit`)).body
    assert.deepEqual(audit.map(entry => entry.nullified), [false, true, true, false])
    const log = verifyPlcLog(did, audit)
    assert.equal(log.head, audit[3].cid)
    assert.deepEqual(plcDocument(log.data!, { format: 'legacy' }), (await directory(`/${did}`)).body)
    // the directory itself refuses what the verifier refuses: a fork by the key that signed what it nullifies
    await assert.rejects(client.sendOperation(did, await plc.updatePdsOp(genesis, low, 'https://again.example.test')))
  })

  it('a rotation-key change, then the old key is refused by the directory and by the verifier', async () => {
    const first = await Secp256k1Keypair.create()
    const second = await Secp256k1Keypair.create()
    const signing = await Secp256k1Keypair.create()
    const did = await client.createDid({ signingKey: signing.did(), handle: 'rotate.test', pds: 'https://pds.example.test', rotationKeys: [first.did()], signer: first })
    await client.updateRotationKeys(did, first, [second.did()])
    await client.updateHandle(did, second, 'rotated.test')
    const log = await keeper.fetchLog(did)
    assert.equal(log.entries.length, 3)
    assert.deepEqual(log.data?.rotationKeys, [second.did()])
    const stale = await plc.updateHandleOp(await client.getLastOp(did) as plc.CompatibleOp, first, 'stale.test')
    await assert.rejects(client.sendOperation(did, stale))
    const cid = CID.createV1(0x71, await sha256.digest(dagCbor.encode(stale))).toString()
    const forged = [...log.entries, { did, operation: stale, cid, nullified: false, createdAt: new Date().toISOString() }]
    assert.throws(() => verifyPlcLog(did, forged), (err: Error & { index?: number }) => {
      assert.equal(err.name, 'PlcLogInvalidError')
      assert.equal(err.index, 3)
      assert.match(err.message, /signature is not by any rotation key valid at this point/)
      return true
    })
  })

  it('a tombstone: the log verifies and derives no document; the directory serves none', async () => {
    const key = await Secp256k1Keypair.create()
    const did = await client.createDid({ signingKey: key.did(), handle: 'gone.test', pds: 'https://pds.example.test', rotationKeys: [key.did()], signer: key })
    await client.tombstone(did, key)
    const log = await keeper.fetchLog(did)
    assert.equal(log.data, null)
    // this directory version answers 404, today's 410
    assert.ok([404, 410].includes((await fetch(`${net.plcUrl}/${did}`)).status))
  })

  it('an unknown DID is DidNotFoundError; a directory that is down is DidResolutionError naming the URL', async () => {
    await assert.rejects(keeper.fetchLog('did:plc:aaaaaaaaaaaaaaaaaaaaaaaa'), { name: 'DidNotFoundError' })
    await net.stopPlc()
    try {
      await assert.rejects(keeper.fetchLog('did:plc:aaaaaaaaaaaaaaaaaaaaaaaa'), (err: Error & { url?: string }) => {
        assert.equal(err.name, 'DidResolutionError')
        assert.equal(err.url, `${net.plcUrl}/did:plc:aaaaaaaaaaaaaaaaaaaaaaaa/log/audit`)
        return true
      })
    } finally {
      await net.startPlc()
    }
  })
})
