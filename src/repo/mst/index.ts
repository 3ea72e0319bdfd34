/**
 * atproto's Merkle Search Tree: key heights, node codec, one traversal (strict walking),
 * building, diffing, editing and sync 1.1 commit proofs.
 */
export { MAX_KEY_LENGTH, commonPrefixLength, ensureValidMstKey, isValidMstKey, keyHeight, mstKeyProblem } from './key.ts'
export { decodeMstNode, encodeMstNode, type MstEntry, type MstNode } from './node.ts'
export { DEFAULT_MAX_NODE_ENTRIES } from './check.ts'
export { MstTraversal, missingNodeError, type MissingMstNode, type MstPlace, type MstTraversalInit, type MstVisit } from './traverse.ts'
export { missingMstBlockBatches, missingMstBlocks, walkMst, walkMstBatches, walkMstSteps, type MissingMstBlocksOptions, type MstLeaf, type MstStep, type WalkMstOptions } from './walk.ts'
export { EMPTY_MST_ROOT, buildMst, type BuiltMst } from './build.ts'
export { diffMst, proofNodesFor, type DiffMstOptions, type MstDiff, type MstRecordOp } from './diff.ts'
export { MstEditor, type MstEditResult, type MstEditorInit } from './mutate.ts'
export { invertCommitOps, normalizeCommitOps, verifyCommitProof, type CommitOp, type CommitProofOptions, type InvertedOps } from './proof.ts'
