import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import {
  DidNotFoundError,
  HeadUnavailableError,
  PdsUnavailableError,
  RepoDeactivatedError,
  RepoNotFoundError,
  RepoSuspendedError,
  RepoTakendownError
} from '../../src/errors.ts'
import { statusOf } from '../../src/mirror/status-policy.ts'

const did = 'did:plc:aaaaaaaaaaaaaaaaaaaaaaaa'

describe('statusOf', () => {
  it('RepoTakendown means takendown', () => {
    assert.equal(statusOf(new RepoTakendownError('taken down', { did })), 'takendown')
  })

  it('RepoSuspended means suspended', () => {
    assert.equal(statusOf(new RepoSuspendedError('suspended', { did })), 'suspended')
  })

  it('RepoDeactivated means deactivated', () => {
    assert.equal(statusOf(new RepoDeactivatedError('deactivated', { did })), 'deactivated')
  })

  it('RepoNotFound and a tombstoned DID mean deleted', () => {
    assert.equal(statusOf(new RepoNotFoundError('not found', { did })), 'deleted')
    assert.equal(statusOf(new DidNotFoundError(did, { tombstoned: true })), 'deleted')
  })

  it('an unknown DID has no status', () => {
    // a 404 proves nothing (a wrong --plc would answer it for every DID): the last good state stays
    assert.equal(statusOf(new DidNotFoundError(did)), undefined)
  })

  it('a composite failure takes the status the PDS gave', () => {
    const err = new HeadUnavailableError(did, [
      { source: 'peers', error: new Error('no peer has it') },
      { source: 'pds', error: new RepoTakendownError('taken down', { did }) }
    ])
    assert.equal(statusOf(err), 'takendown')
  })

  it('transient failures have no status', () => {
    assert.equal(statusOf(new PdsUnavailableError('down', { did })), undefined)
    assert.equal(statusOf(new HeadUnavailableError(did, [{ source: 'pds', error: new PdsUnavailableError('down', { did }) }])), undefined)
    assert.equal(statusOf(new DOMException('stop', 'AbortError')), undefined)
  })
})
