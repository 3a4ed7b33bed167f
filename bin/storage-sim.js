#!/usr/bin/env node
import { main } from '../dist/storage-sim/cli.js';

await main(process.argv);
