// Role assignment: the first three nodes of a cluster are its control nodes.
import type { NodeRole } from './types';

const CONTROL_ROLES: readonly NodeRole[] = ['sds', 'backup1', 'backup2'];

/**
 * The role a newly joining node gets, given the roles already taken.
 * A control role freed by a node that left is given to the next node to join.
 */
export function roleForNewNode(takenRoles: readonly NodeRole[]): NodeRole {
  for (const role of CONTROL_ROLES) {
    if (!takenRoles.includes(role)) return role;
  }
  return 'standard';
}
