// Build-time MSBuild task (compiled by RoslynCodeTaskFactory, see LibTorchSharpGlibcxx.targets).
//
// Why: TorchSharp 0.107's libLibTorchSharp.so was linked with GCC 13 and declares a version need
// GLIBCXX_3.4.32 on libstdc++.so.6. Debian 12 / Ubuntu 22.04 ship libstdc++ up to GLIBCXX_3.4.30,
// so the dynamic loader refuses the library ("version `GLIBCXX_3.4.32' not found"). The only symbol
// bound to that version is std::ios_base_library_init() (_ZSt21ios_base_library_initv), which GCC 13's
// <iostream> references only to force a link-time dependency; no relocation uses it. Setting
// VER_FLG_WEAK (0x2) on that Vernaux entry makes the loader accept its absence.
//
// The task rewrites only copies inside build/publish output folders (never the NuGet cache: it writes a
// new file and renames it over the old one, which also breaks any hard link), only on Linux and only when
// the host libstdc++ lacks the version (a packed tool's copy always: EvenIfHostHasVersion), and only after
// checking that no dynamic symbol other than ios_base_library_init is bound to it. Running it again is a no-op.
using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Runtime.InteropServices;
using System.Text;
using Microsoft.Build.Framework;
using Microsoft.Build.Utilities;

public class WeakenGlibcxxVersionNeed : Task
{
    private const string NeededVersion = "GLIBCXX_3.4.32";
    private const string NeededFile = "libstdc++.so.6";
    private const string OnlyAllowedSymbol = "_ZSt21ios_base_library_initv";
    private const uint ShtDynsym = 11;
    private const uint ShtGnuVerdef = 0x6ffffffd;
    private const uint ShtGnuVerneed = 0x6ffffffe;
    private const uint ShtGnuVersym = 0x6fffffff;
    private const ushort VerFlgWeak = 0x2;

    /// <summary>Candidate libLibTorchSharp.so copies (in output folders).</summary>
    [Required]
    public ITaskItem[] Libraries { get; set; } = Array.Empty<ITaskItem>();

    /// <summary>Optional explicit path of the host libstdc++ (for testing); found with ldconfig otherwise.</summary>
    public string HostLibStdCxx { get; set; } = "";

    /// <summary>
    /// Patch even when the host libstdc++ defines the version: for files that are packed and run elsewhere (the
    /// dotnet tool package), whose target machine's libstdc++ is unknown. The weak need is harmless where the version exists.
    /// </summary>
    public bool EvenIfHostHasVersion { get; set; }

    public override bool Execute()
    {
        if (EvenIfHostHasVersion)
        {
            Log.LogMessage(MessageImportance.Low, "ComposerSharp: patching regardless of the host (EvenIfHostHasVersion).");
        }
        else
        {
            if (!RuntimeInformation.IsOSPlatform(OSPlatform.Linux))
            {
                return true;
            }

            string host = string.IsNullOrEmpty(HostLibStdCxx) ? FindHostLibStdCxx() : HostLibStdCxx;
            if (host == null || !File.Exists(host))
            {
                Log.LogWarning("ComposerSharp: could not locate the host libstdc++.so.6; libLibTorchSharp.so left unpatched.");
                return true;
            }

            if (DefinesVersion(File.ReadAllBytes(host), NeededVersion))
            {
                Log.LogMessage(MessageImportance.Low, "ComposerSharp: host {0} defines {1}; no patch needed.", host, NeededVersion);
                return true;
            }
        }

        foreach (ITaskItem item in Libraries)
        {
            string path = item.GetMetadata("FullPath");
            if (!File.Exists(path))
            {
                continue;
            }

            byte[] bytes = File.ReadAllBytes(path);
            string result = Patch(bytes, out bool changed);
            if (result != null)
            {
                Log.LogError("ComposerSharp: cannot patch {0}: {1}", path, result);
                return false;
            }

            if (!changed)
            {
                Log.LogMessage(MessageImportance.Low, "ComposerSharp: {0} already patched.", path);
                continue;
            }

            string temp = path + ".patching";
            DateTime written = File.GetLastWriteTimeUtc(path);
            File.WriteAllBytes(temp, bytes);
            // Replace by rename (the task runs on netstandard2.0, whose File.Move cannot overwrite): the old
            // directory entry is removed, never written through, so a hard link into the NuGet cache stays intact.
            File.Delete(path);
            File.Move(temp, path);
            // Keep the copy's timestamp so that MSBuild's incremental copy sees it as unchanged next build.
            File.SetLastWriteTimeUtc(path, written);
            Log.LogMessage(MessageImportance.High, "ComposerSharp: marked {0} version need weak in {1} (host libstdc++ lacks it).", NeededVersion, path);
        }

        return true;
    }

    private static string FindHostLibStdCxx()
    {
        try
        {
            foreach (string ldconfig in new[] { "/sbin/ldconfig", "/usr/sbin/ldconfig" })
            {
                if (!File.Exists(ldconfig))
                {
                    continue;
                }

                var psi = new ProcessStartInfo(ldconfig, "-p") { RedirectStandardOutput = true, UseShellExecute = false };
                string output;
                using (Process p = Process.Start(psi))
                {
                    output = p.StandardOutput.ReadToEnd();
                    p.WaitForExit();
                }

                foreach (string line in output.Split('\n'))
                {
                    if (line.TrimStart().StartsWith(NeededFile + " ") && line.Contains("x86-64"))
                    {
                        int arrow = line.IndexOf("=> ", StringComparison.Ordinal);
                        if (arrow >= 0)
                        {
                            return line.Substring(arrow + 3).Trim();
                        }
                    }
                }
            }
        }
        catch (Exception)
        {
            // Fall through to the well-known paths.
        }

        foreach (string dir in new[] { "/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/lib64", "/usr/lib" })
        {
            string candidate = Path.Combine(dir, NeededFile);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }

        return null;
    }

    private struct Section
    {
        public uint Type;
        public long Offset;
        public long Size;
        public uint Link;
        public uint Info;
        public long EntSize;
    }

    private static Section[] ReadSections(byte[] b)
    {
        if (b.Length < 64 || b[0] != 0x7f || b[1] != (byte)'E' || b[2] != (byte)'L' || b[3] != (byte)'F')
        {
            throw new InvalidDataException("not an ELF file");
        }

        if (b[4] != 2 || b[5] != 1)
        {
            throw new InvalidDataException("not a little-endian 64-bit ELF file");
        }

        long shoff = BitConverter.ToInt64(b, 0x28);
        int shentsize = BitConverter.ToUInt16(b, 0x3A);
        int shnum = BitConverter.ToUInt16(b, 0x3C);
        var sections = new Section[shnum];
        for (int i = 0; i < shnum; i++)
        {
            long o = shoff + (long)i * shentsize;
            sections[i] = new Section
            {
                Type = BitConverter.ToUInt32(b, (int)o + 4),
                Offset = BitConverter.ToInt64(b, (int)o + 0x18),
                Size = BitConverter.ToInt64(b, (int)o + 0x20),
                Link = BitConverter.ToUInt32(b, (int)o + 0x28),
                Info = BitConverter.ToUInt32(b, (int)o + 0x2C),
                EntSize = BitConverter.ToInt64(b, (int)o + 0x38),
            };
        }

        return sections;
    }

    private static string CString(byte[] b, long offset)
    {
        int end = (int)offset;
        while (end < b.Length && b[end] != 0)
        {
            end++;
        }

        return Encoding.ASCII.GetString(b, (int)offset, end - (int)offset);
    }

    /// <summary>True when the ELF file's .gnu.version_d defines <paramref name="version"/>.</summary>
    public static bool DefinesVersion(byte[] b, string version)
    {
        Section[] sections = ReadSections(b);
        foreach (Section s in sections)
        {
            if (s.Type != ShtGnuVerdef)
            {
                continue;
            }

            long strtab = sections[s.Link].Offset;
            long vd = s.Offset;
            for (uint i = 0; i < s.Info; i++)
            {
                uint aux = BitConverter.ToUInt32(b, (int)vd + 12);
                uint next = BitConverter.ToUInt32(b, (int)vd + 16);
                uint nameOffset = BitConverter.ToUInt32(b, (int)(vd + aux));
                if (CString(b, strtab + nameOffset) == version)
                {
                    return true;
                }

                if (next == 0)
                {
                    break;
                }

                vd += next;
            }
        }

        return false;
    }

    /// <summary>
    /// Sets VER_FLG_WEAK on the GLIBCXX_3.4.32 need in <paramref name="b"/> (in memory).
    /// Returns null on success (changed says whether a byte changed) or a reason for refusing.
    /// </summary>
    public static string Patch(byte[] b, out bool changed)
    {
        changed = false;
        Section[] sections = ReadSections(b);
        int vernaux = -1;
        ushort versionIndex = 0;
        foreach (Section s in sections)
        {
            if (s.Type != ShtGnuVerneed)
            {
                continue;
            }

            long strtab = sections[s.Link].Offset;
            long vn = s.Offset;
            for (uint i = 0; i < s.Info; i++)
            {
                ushort cnt = BitConverter.ToUInt16(b, (int)vn + 2);
                uint file = BitConverter.ToUInt32(b, (int)vn + 4);
                uint aux = BitConverter.ToUInt32(b, (int)vn + 8);
                uint next = BitConverter.ToUInt32(b, (int)vn + 12);
                if (CString(b, strtab + file) == NeededFile)
                {
                    long va = vn + aux;
                    for (int j = 0; j < cnt; j++)
                    {
                        uint name = BitConverter.ToUInt32(b, (int)va + 8);
                        uint vnext = BitConverter.ToUInt32(b, (int)va + 12);
                        if (CString(b, strtab + name) == NeededVersion)
                        {
                            vernaux = (int)va;
                            versionIndex = (ushort)(BitConverter.ToUInt16(b, (int)va + 6) & 0x7fff);
                        }

                        if (vnext == 0)
                        {
                            break;
                        }

                        va += vnext;
                    }
                }

                if (next == 0)
                {
                    break;
                }

                vn += next;
            }
        }

        if (vernaux < 0)
        {
            return null; // Nothing needs GLIBCXX_3.4.32: a TorchSharp build that does not need the patch.
        }

        // Refuse unless every dynamic symbol bound to this version is the link-forcing ios_base_library_init.
        Section? dynsym = null;
        Section? versym = null;
        foreach (Section s in sections)
        {
            if (s.Type == ShtDynsym) dynsym = s;
            if (s.Type == ShtGnuVersym) versym = s;
        }

        if (dynsym == null || versym == null)
        {
            return "no .dynsym or .gnu.version section";
        }

        long count = dynsym.Value.Size / 24;
        long dynstr = sections[dynsym.Value.Link].Offset;
        var bound = new List<string>();
        for (long i = 0; i < count; i++)
        {
            ushort v = (ushort)(BitConverter.ToUInt16(b, (int)(versym.Value.Offset + 2 * i)) & 0x7fff);
            if (v == versionIndex)
            {
                uint name = BitConverter.ToUInt32(b, (int)(dynsym.Value.Offset + 24 * i));
                bound.Add(CString(b, dynstr + name));
            }
        }

        foreach (string symbol in bound)
        {
            if (symbol != OnlyAllowedSymbol)
            {
                return $"symbol {symbol} is bound to {NeededVersion}; weakening the need would hide a real dependency";
            }
        }

        ushort flags = BitConverter.ToUInt16(b, vernaux + 4);
        if ((flags & VerFlgWeak) != 0)
        {
            return null;
        }

        flags |= VerFlgWeak;
        b[vernaux + 4] = (byte)(flags & 0xff);
        b[vernaux + 5] = (byte)(flags >> 8);
        changed = true;
        return null;
    }
}
