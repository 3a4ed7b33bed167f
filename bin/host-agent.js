#!/usr/bin/env node
import { main } from '../dist/host-agent/cli.js';

await main(process.argv);
