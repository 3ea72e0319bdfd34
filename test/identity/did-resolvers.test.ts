import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { webDocumentUrl } from '../../src/identity/did-resolvers.ts'
import { normalizeHandle } from '../../src/identity/handle.ts'

describe('did:web document URL', () => {
  it('hostname-level did:web', () => {
    assert.equal(webDocumentUrl('example.com'), 'https://example.com/.well-known/did.json')
  })

  it('localhost with a port over http when allowed', () => {
    assert.equal(webDocumentUrl('localhost%3A2583', true), 'http://localhost:2583/.well-known/did.json')
    assert.equal(webDocumentUrl('localhost', true), 'http://localhost/.well-known/did.json')
  })

  it('localhost refused unless allowed', () => {
    assert.match((webDocumentUrl('localhost%3A2583') as { error: string }).error, /only allowed in tests/)
  })

  it('path-based did:web is not supported', () => {
    assert.match((webDocumentUrl('example.com:user:alice') as { error: string }).error, /path-based/)
  })

  it('a port is only allowed for localhost', () => {
    assert.match((webDocumentUrl('example.com%3A8080') as { error: string }).error, /only allowed for localhost/)
  })

  it('rejects what is not a hostname', () => {
    for (const id of ['127.0.0.1', 'exa_mple.com', 'com', '%zz', 'Example.com']) {
      assert.ok(typeof webDocumentUrl(id) === 'object', id)
    }
  })
})

describe('normalizeHandle', () => {
  it('lowercases and drops a leading @', () => {
    assert.equal(normalizeHandle('@Alice.Example.COM'), 'alice.example.com')
  })

  it('rejects what is not a handle', () => {
    for (const bad of ['alice', 'did:plc:z72i7hdynmk6r22z27h6tvur', 'alice..com', 'alice.123', '']) {
      assert.throws(() => normalizeHandle(bad), { name: 'InvalidIdentifierError' }, bad)
    }
  })
})
