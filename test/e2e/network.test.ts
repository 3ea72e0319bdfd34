import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { startTestNetwork, type TestNetwork } from '../../support/network.ts'

describe('test network', () => {
  let net: TestNetwork

  before(async () => {
    net = await startTestNetwork()
  })

  after(async () => {
    await net?.stop()
  })

  it('creates an account whose DID document names the PDS', async () => {
    const account = await net.createAccount('smoke')
    assert.match(account.did, /^did:plc:[a-z2-7]{24}$/)
    assert.equal(account.handle, 'smoke1.test')
    const res = await fetch(`${net.plcUrl}/${account.did}`)
    assert.equal(res.status, 200)
    const doc = await res.json() as { alsoKnownAs: string[], service: Array<{ id: string, serviceEndpoint: string }> }
    assert.deepEqual(doc.alsoKnownAs, ['at://smoke1.test'])
    assert.equal(doc.service.find(s => s.id === '#atproto_pds')?.serviceEndpoint, net.pdsUrl)
  })

  it('writes 300 records in two commits and reports the latest commit', async () => {
    const account = await net.createAccount('bulk')
    const records = Array.from({ length: 300 }, (_, i) => ({
      collection: 'app.bsky.feed.post',
      value: { text: `post ${i}`, createdAt: new Date(Date.UTC(2024, 0, 1, 0, 0, i)).toISOString() }
    }))
    const written = await net.writeRecords(account, records)
    assert.equal(written.records.length, 300)
    assert.equal(new Set(written.records.map(r => r.rkey)).size, 300)
    const head = await net.getLatestCommit(account.did)
    assert.deepEqual(head, written.commit)
    const car = await net.getRepoCar(account.did)
    assert.ok(car.byteLength > 300 * 50)
  })

  it('updates and deletes records, each in a new commit', async () => {
    const account = await net.createAccount('edit')
    const { records: [created], commit: first } = await net.writeRecords(account, [{ collection: 'app.bsky.actor.profile', rkey: 'self', value: { displayName: 'before' } }])
    assert.equal(created?.rkey, 'self')
    const updated = await net.updateRecord(account, { collection: 'app.bsky.actor.profile', rkey: 'self', value: { displayName: 'after' } })
    assert.notEqual(updated.cid, created?.cid)
    assert.ok(updated.commit.rev > first.rev)
    const deleted = await net.deleteRecord(account, 'app.bsky.actor.profile', 'self')
    assert.ok(deleted.commit.rev > updated.commit.rev)
    assert.deepEqual(await net.getLatestCommit(account.did), deleted.commit)
  })

  it('serves again after the PDS restarts on the same port', async () => {
    const account = await net.createAccount('restart')
    const before = await net.getLatestCommit(account.did)
    await net.stopPds()
    await assert.rejects(fetch(`${net.pdsUrl}/xrpc/_health`, { signal: AbortSignal.timeout(2000) }))
    await net.startPds()
    assert.deepEqual(await net.getLatestCommit(account.did), before)
  })

  it('rotates the signing key in PLC and signs the next commit with it', async () => {
    const account = await net.createAccount('rotate')
    const res = await fetch(`${net.plcUrl}/${account.did}/data`)
    const data = await res.json() as { verificationMethods: { atproto: string } }
    const rotated = await net.rotateSigningKey(account)
    assert.notEqual(rotated.didKey, data.verificationMethods.atproto)
    const after = await (await fetch(`${net.plcUrl}/${account.did}/data`)).json() as { verificationMethods: { atproto: string } }
    assert.equal(after.verificationMethods.atproto, rotated.didKey)
    assert.deepEqual(await net.getLatestCommit(account.did), rotated.commit)
  })
})
