import type { Command } from 'commander';

export function addAdminCommands(_program: Command): void {}
