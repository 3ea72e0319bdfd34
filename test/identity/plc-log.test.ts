/**
 * did:plc audit logs: operations made and signed by @did-plc/lib (the reference
 * implementation) with keys of @atproto/crypto, timed by hand so recovery windows
 * can be tested; hashing and CIDs computed here with @ipld/dag-cbor, not with the
 * code under test. The real directory's logs are checked in test/e2e/plc-log.test.ts.
 */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import * as dagCbor from '@ipld/dag-cbor'
import { sha256 } from 'multiformats/hashes/sha2'
import { CID } from 'multiformats/cid'
import { base32 } from 'multiformats/bases/base32'
import { Secp256k1Keypair, P256Keypair } from '@atproto/crypto'
import * as plc from '@did-plc/lib'
import { comparePlcLogs, plcDocument, verifyPlcLog, type PlcLogEntry } from '../../src/identity/plc-log.ts'
import { parseAtprotoDocument } from '../../src/identity/did-document.ts'

const HOUR = 3_600_000
const T0 = Date.UTC(2025, 0, 1)

async function cidOf (op: unknown): Promise<string> {
  return CID.createV1(0x71, await sha256.digest(dagCbor.encode(op))).toString()
}

async function didOf (op: unknown): Promise<string> {
  return 'did:plc:' + base32.baseEncode((await sha256.digest(dagCbor.encode(op))).digest).slice(0, 24)
}

/** Audit entries for `ops` at the given hours after T0, with the given nullified flags. */
async function entries (did: string, ops: Array<{ op: any, hours: number, nullified?: boolean }>): Promise<PlcLogEntry[]> {
  return await Promise.all(ops.map(async ({ op, hours, nullified }) => ({
    did, operation: op, cid: await cidOf(op), nullified: nullified === true, createdAt: new Date(T0 + hours * HOUR).toISOString()
  })))
}

const keys = {
  recovery: await Secp256k1Keypair.create(),
  pds: await Secp256k1Keypair.create(),
  signing: await Secp256k1Keypair.create(),
  other: await P256Keypair.create(),
  attacker: await Secp256k1Keypair.create()
}

/** A genesis whose rotation keys are [recovery, pds]; `pds` signs it. */
async function genesis (handle = 'alice.test'): Promise<{ did: string, op: any }> {
  const { op, did } = await plc.createOp({
    signingKey: keys.signing.did(),
    handle,
    pds: 'https://pds.example.test',
    rotationKeys: [keys.recovery.did(), keys.pds.did()],
    signer: keys.pds
  })
  return { did, op }
}

function assertInvalid (did: string, log: unknown, pattern: RegExp, index?: number): void {
  assert.throws(() => verifyPlcLog(did, log), (err: Error & { did?: string, index?: number, cid?: string }) => {
    assert.equal(err.name, 'PlcLogInvalidError', err.message)
    assert.equal(err.did, did)
    assert.match(err.message, pattern)
    assert.match(err.message, new RegExp(`did=${did}`))
    if (index !== undefined) {
      assert.equal(err.index, index, err.message)
      assert.match(err.message, new RegExp(`index=${index} cid=${err.cid ?? ''}`))
    }
    return true
  })
}

describe('verifyPlcLog: valid logs', () => {
  it('a genesis alone: the DID is its hash, the state its fields', async () => {
    const { did, op } = await genesis()
    assert.equal(did, await didOf(op))
    const log = verifyPlcLog(did, await entries(did, [{ op, hours: 0 }]))
    assert.equal(log.head, await cidOf(op))
    assert.deepEqual(log.data?.rotationKeys, [keys.recovery.did(), keys.pds.did()])
    const parsed = parseAtprotoDocument(did, plcDocument(log.data!))
    assert.equal(parsed.didKey, keys.signing.did())
    assert.equal(parsed.pds, 'https://pds.example.test')
    assert.equal(parsed.handle, 'alice.test')
  })

  it('signing-key, PDS, handle and rotation-key changes, each signed by a key valid at that point', async () => {
    const { did, op: g } = await genesis()
    const newSigning = await P256Keypair.create()
    const op1 = await plc.updateAtprotoKeyOp(g, keys.pds, newSigning.did())
    const op2 = await plc.updatePdsOp(op1, keys.recovery, 'https://pds2.example.test')
    const op3 = await plc.updateHandleOp(op2, keys.pds, 'alice2.test')
    const op4 = await plc.updateRotationKeysOp(op3, keys.pds, [keys.recovery.did(), keys.other.did()])
    const op5 = await plc.updateHandleOp(op4, keys.other, 'alice3.test') // p256 rotation key, added by op4
    const log = verifyPlcLog(did, await entries(did, [{ op: g, hours: 0 }, { op: op1, hours: 1 }, { op: op2, hours: 2 }, { op: op3, hours: 3 }, { op: op4, hours: 4 }, { op: op5, hours: 5 }]))
    assert.equal(log.head, await cidOf(op5))
    const parsed = parseAtprotoDocument(did, plcDocument(log.data!))
    assert.equal(parsed.didKey, newSigning.did())
    assert.equal(parsed.signingKey.type, 'p256')
    assert.equal(parsed.pds, 'https://pds2.example.test')
    assert.equal(parsed.handle, 'alice3.test')
  })

  it('a legacy create genesis (rotation keys [recovery, signing])', async () => {
    const op = await plc.deprecatedSignCreate({
      type: 'create', signingKey: keys.signing.did(), recoveryKey: keys.recovery.did(), handle: 'legacy.test', service: 'https://pds.example.test', prev: null
    }, keys.signing)
    const did = await didOf(op)
    const update = await plc.updateHandleOp(op, keys.signing, 'legacy2.test')
    const log = verifyPlcLog(did, await entries(did, [{ op, hours: 0 }, { op: update, hours: 1 }]))
    assert.deepEqual(log.data?.rotationKeys, [keys.recovery.did(), keys.signing.did()])
    assert.deepEqual(log.data?.alsoKnownAs, ['at://legacy2.test'])
    assert.deepEqual(log.data?.services, { atproto_pds: { type: 'AtprotoPersonalDataServer', endpoint: 'https://pds.example.test' } })
  })

  it('a tombstone ends the log: no document', async () => {
    const { did, op: g } = await genesis()
    const tomb = await plc.tombstoneOp(CID.parse(await cidOf(g)), keys.pds)
    const log = verifyPlcLog(did, await entries(did, [{ op: g, hours: 0 }, { op: tomb, hours: 1 }]))
    assert.equal(log.data, null)
    assert.equal(log.head, await cidOf(tomb))
  })

  it('a recovery within 72 h by a higher-priority key nullifies the ops after its prev', async () => {
    const { did, op: g } = await genesis()
    const hijack = await plc.updatePdsOp(g, keys.pds, 'https://evil.example.test')
    const hijack2 = await plc.updateHandleOp(hijack, keys.pds, 'evil.test')
    const recovery = await plc.updateRotationKeysOp(g, keys.recovery, [keys.recovery.did()])
    const log = verifyPlcLog(did, await entries(did, [
      { op: g, hours: 0 }, { op: hijack, hours: 10, nullified: true }, { op: hijack2, hours: 11, nullified: true }, { op: recovery, hours: 81 }
    ]))
    assert.equal(log.head, await cidOf(recovery))
    assert.equal(parseAtprotoDocument(did, plcDocument(log.data!)).pds, 'https://pds.example.test')
  })

  it('a recovery of a tombstone', async () => {
    const { did, op: g } = await genesis()
    const tomb = await plc.tombstoneOp(CID.parse(await cidOf(g)), keys.pds)
    const recovery = await plc.updateHandleOp(g, keys.recovery, 'back.test')
    const log = verifyPlcLog(did, await entries(did, [{ op: g, hours: 0 }, { op: tomb, hours: 1, nullified: true }, { op: recovery, hours: 2 }]))
    assert.deepEqual(log.data?.alsoKnownAs, ['at://back.test'])
  })
})

describe('verifyPlcLog: hostile logs', () => {
  it('a bad signature', async () => {
    const { did, op: g } = await genesis()
    const op1 = await plc.updatePdsOp(g, keys.pds, 'https://pds2.example.test')
    const other = await plc.updatePdsOp(g, keys.pds, 'https://other.example.test')
    const forged = { ...op1, sig: other.sig }
    assertInvalid(did, await entries(did, [{ op: g, hours: 0 }, { op: forged, hours: 1 }]), /signature is not by any rotation key/, 1)
    // a high-S twin of a valid signature is refused too
    const bytes = Buffer.from(op1.sig, 'base64url')
    const n = BigInt('0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141')
    const s = BigInt('0x' + bytes.subarray(32).toString('hex'))
    const highS = Buffer.concat([bytes.subarray(0, 32), Buffer.from((n - s).toString(16).padStart(64, '0'), 'hex')])
    assertInvalid(did, await entries(did, [{ op: g, hours: 0 }, { op: { ...op1, sig: highS.toString('base64url') }, hours: 1 }]), /signature is not by any rotation key/, 1)
    // and a sig that is not canonical base64url
    assertInvalid(did, await entries(did, [{ op: g, hours: 0 }, { op: { ...op1, sig: op1.sig + '=' }, hours: 1 }]), /sig is not unpadded base64url/, 1)
  })

  it('a broken prev chain', async () => {
    const { did, op: g } = await genesis()
    const op1 = await plc.updatePdsOp(g, keys.pds, 'https://pds2.example.test')
    const op2 = await plc.updateHandleOp(op1, keys.pds, 'bob.test')
    // op2 without op1: its prev is not in the chain
    assertInvalid(did, await entries(did, [{ op: g, hours: 0 }, { op: op2, hours: 2 }]), /prev \S+ is not an operation of the current chain/, 1)
    // a second genesis
    const { op: g2 } = await genesis('second.test')
    assertInvalid(did, await entries(did, [{ op: g, hours: 0 }, { op: { ...g2, prev: null }, hours: 1 }]), /second genesis/, 1)
  })

  it('an entry whose cid is not its operation\'s', async () => {
    const { did, op: g } = await genesis()
    const op1 = await plc.updatePdsOp(g, keys.pds, 'https://pds2.example.test')
    const log = await entries(did, [{ op: g, hours: 0 }, { op: op1, hours: 1 }])
    log[1] = { ...log[1]!, cid: log[0]!.cid }
    assertInvalid(did, log, /cid does not match the operation/, 1)
  })

  it('a genesis that does not hash to the DID', async () => {
    const { did, op: g } = await genesis()
    const { did: otherDid } = await genesis('other.test')
    assert.notEqual(did, otherDid)
    assertInvalid(otherDid, (await entries(did, [{ op: g, hours: 0 }])).map(e => ({ ...e, did: otherDid })), /genesis operation hashes to did:plc:\w+, not to the DID/, 0)
  })

  it('a genesis signed by a key it does not list', async () => {
    const { op } = await genesis()
    const signed = await plc.addSignature(Object.fromEntries(Object.entries(op).filter(([k]) => k !== 'sig')), keys.attacker)
    const did = await didOf(signed)
    assertInvalid(did, await entries(did, [{ op: signed, hours: 0 }]), /genesis signature is not by any of its rotation keys/, 0)
  })

  it('an op signed by a key not yet valid (added by that same op)', async () => {
    const { did, op: g } = await genesis()
    const op1 = await plc.updateRotationKeysOp(g, keys.attacker, [keys.attacker.did(), keys.recovery.did()])
    assertInvalid(did, await entries(did, [{ op: g, hours: 0 }, { op: op1, hours: 1 }]), /signature is not by any rotation key valid at this point/, 1)
  })

  it('an op signed by a key no longer valid (removed by the op before)', async () => {
    const { did, op: g } = await genesis()
    const op1 = await plc.updateRotationKeysOp(g, keys.recovery, [keys.recovery.did()])
    const op2 = await plc.updatePdsOp(op1, keys.pds, 'https://evil.example.test')
    assertInvalid(did, await entries(did, [{ op: g, hours: 0 }, { op: op1, hours: 1 }, { op: op2, hours: 2 }]), /signature is not by any rotation key valid at this point/, 2)
  })

  it('a nullification outside the 72 h window', async () => {
    const { did, op: g } = await genesis()
    const hijack = await plc.updatePdsOp(g, keys.pds, 'https://evil.example.test')
    const recovery = await plc.updateRotationKeysOp(g, keys.recovery, [keys.recovery.did()])
    assertInvalid(did, await entries(did, [
      { op: g, hours: 0 }, { op: hijack, hours: 10, nullified: true }, { op: recovery, hours: 83 }
    ]), /recovery 73 h after the operation it nullifies \(\S+\), outside the 72 h window/, 2)
  })

  it('a nullification by a key that does not outrank the nullified op\'s signer', async () => {
    const { did, op: g } = await genesis()
    const op1 = await plc.updatePdsOp(g, keys.recovery, 'https://pds2.example.test')
    const fork = await plc.updatePdsOp(g, keys.pds, 'https://evil.example.test')
    assertInvalid(did, await entries(did, [
      { op: g, hours: 0 }, { op: op1, hours: 1, nullified: true }, { op: fork, hours: 2 }
    ]), /does not outrank key 0/, 2)
  })

  it('nullified flags that the replay does not give', async () => {
    const { did, op: g } = await genesis()
    const op1 = await plc.updatePdsOp(g, keys.pds, 'https://pds2.example.test')
    assertInvalid(did, await entries(did, [{ op: g, hours: 0 }, { op: op1, hours: 1, nullified: true }]), /marked nullified, but no valid recovery nullifies it/, 1)
    const recovery = await plc.updatePdsOp(g, keys.recovery, 'https://pds3.example.test')
    assertInvalid(did, await entries(did, [{ op: g, hours: 0 }, { op: op1, hours: 1 }, { op: recovery, hours: 2 }]), /nullified by a later recovery, but not marked so/, 1)
  })

  it('an op after a tombstone', async () => {
    const { did, op: g } = await genesis()
    const tomb = await plc.tombstoneOp(CID.parse(await cidOf(g)), keys.pds)
    const after = { ...(await plc.updateHandleOp(g, keys.pds, 'zombie.test')), prev: await cidOf(tomb) }
    const resigned = await plc.addSignature(Object.fromEntries(Object.entries(after).filter(([k]) => k !== 'sig')), keys.pds)
    assertInvalid(did, await entries(did, [{ op: g, hours: 0 }, { op: tomb, hours: 1 }, { op: resigned, hours: 2 }]), /builds on a tombstone/, 2)
  })

  it('malformed entries and operations', async () => {
    const { did, op: g } = await genesis()
    assertInvalid(did, [], /empty log/)
    assertInvalid(did, { entries: [] }, /not an array/)
    assertInvalid(did, await entries(did, [{ op: { ...g, extra: 1 }, hours: 0 }]), /unknown field extra/, 0)
    assertInvalid(did, await entries(did, [{ op: { ...g, rotationKeys: [] }, hours: 0 }]), /rotationKeys is not 1 to 5 strings/, 0)
    const log = await entries(did, [{ op: g, hours: 0 }])
    assertInvalid(did, log.map(e => ({ ...e, createdAt: 'yesterday' })), /createdAt is not a timestamp/, 0)
  })
})

describe('comparePlcLogs', () => {
  it('same, extends, truncated, forked', async () => {
    const { did, op: g } = await genesis()
    const op1 = await plc.updatePdsOp(g, keys.pds, 'https://pds2.example.test')
    const op2 = await plc.updateHandleOp(op1, keys.pds, 'bob.test')
    const full = verifyPlcLog(did, await entries(did, [{ op: g, hours: 0 }, { op: op1, hours: 1 }, { op: op2, hours: 2 }]))
    const short = verifyPlcLog(did, await entries(did, [{ op: g, hours: 0 }, { op: op1, hours: 1 }]))
    assert.equal(comparePlcLogs(short, full), 'extends')
    assert.equal(comparePlcLogs(full, full), 'same')
    assert.throws(() => comparePlcLogs(full, short), (err: Error & { index?: number }) => {
      assert.equal(err.name, 'PlcLogConflictError')
      assert.match(err.message, /truncated; did=\S+ index=2/)
      return true
    })
    // a different (validly signed) history from the same genesis
    const other = await plc.updatePdsOp(g, keys.pds, 'https://elsewhere.example.test')
    const forked = verifyPlcLog(did, await entries(did, [{ op: g, hours: 0 }, { op: other, hours: 1 }, { op: await plc.updateHandleOp(other, keys.pds, 'x.test'), hours: 2 }]))
    assert.throws(() => comparePlcLogs(full, forked), { name: 'PlcLogConflictError', message: /forks from the stored one/ })
    // the same operations, re-dated
    const redated = verifyPlcLog(did, await entries(did, [{ op: g, hours: 0 }, { op: op1, hours: 1.5 }, { op: op2, hours: 2 }]))
    assert.throws(() => comparePlcLogs(full, redated), { name: 'PlcLogConflictError', message: /dates the entry/ })
  })

  it('a recovery that nullifies stored ops within the rules is an extension', async () => {
    const { did, op: g } = await genesis()
    const hijack = await plc.updatePdsOp(g, keys.pds, 'https://evil.example.test')
    const stored = verifyPlcLog(did, await entries(did, [{ op: g, hours: 0 }, { op: hijack, hours: 1 }]))
    const recovery = await plc.updatePdsOp(g, keys.recovery, 'https://pds.example.test')
    const recovered = verifyPlcLog(did, await entries(did, [{ op: g, hours: 0 }, { op: hijack, hours: 1, nullified: true }, { op: recovery, hours: 5 }]))
    assert.equal(comparePlcLogs(stored, recovered), 'extends')
  })
})
