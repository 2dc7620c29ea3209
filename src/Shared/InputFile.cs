using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Unicode;

namespace FineTune.IO;

/// <summary>
/// Checks a file that a user named before it is read: it must be a regular file (a device such as /dev/zero never
/// ends, a named pipe blocks until someone writes to it) of at most a bound for its format, and text must be UTF-8.
/// This source is compiled into each layer that reads user files (Data, Models, Pipeline); each wraps the sentences
/// it returns into its own exception type with the advice that fits the file.
/// </summary>
internal static class InputFile
{
    /// <summary>A reason not to read a file: <see cref="Text"/> is a phrase to put after the path; <see cref="TooLarge"/>
    /// tells a file over the size bound (advice: split it) from one that is not a regular file (advice: point elsewhere).</summary>
    public sealed record Problem(string Text, bool TooLarge);

    /// <summary>
    /// What is wrong with <paramref name="path"/> as an input of at most <paramref name="maxBytes"/> bytes
    /// ("links to /dev/zero, a character device, not a regular file"; "2147483648 bytes, more than the 1 GiB limit
    /// for one dataset file"), or null when it is a regular file within the bound (or does not exist: callers say so).
    /// </summary>
    public static Problem? Check(string path, long maxBytes, string limitFor)
    {
        var kind = KindOf(path);
        if (kind is FileKind.Missing) return null;
        if (kind is not (FileKind.Regular or FileKind.Unknown))
        {
            var what = kind switch
            {
                FileKind.Directory => "a directory",
                FileKind.CharacterDevice => "a character device",
                FileKind.BlockDevice => "a block device",
                FileKind.Fifo => "a named pipe (FIFO)",
                FileKind.Socket => "a socket",
                _ => "a special file",
            };
            var target = new FileInfo(path).ResolveLinkTarget(returnFinalTarget: true)?.FullName;
            return new Problem(target is null ? $"is {what}, not a regular file" : $"links to {target}, {what}, not a regular file", false);
        }
        // FileInfo describes a link itself (its length is that of the target's name), so measure what it points to.
        var info = new FileInfo(path);
        var length = (info.LinkTarget is null ? info : info.ResolveLinkTarget(returnFinalTarget: true) as FileInfo ?? info).Length;
        return length > maxBytes ? new Problem($"{length} bytes, more than the {Size(maxBytes)} limit for {limitFor}", true) : null;
    }

    /// <summary>
    /// The file's bytes, after <see cref="Check"/> found nothing wrong; a file that yields more bytes than its size
    /// (a device where the file kind cannot be asked) stops there instead of filling memory.
    /// </summary>
    public static byte[] ReadAllBytes(string path, long maxBytes, string limitFor, Func<Problem, Exception> error)
    {
        if (Check(path, maxBytes, limitFor) is { } problem) throw error(problem);
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.SequentialScan);
        var length = stream.Length;
        var buffer = new byte[length];
        var read = 0;
        while (read < length)
        {
            var n = stream.Read(buffer, read, buffer.Length - read);
            if (n == 0) return buffer[..read]; // shrank while being read: take what is there
            read += n;
        }
        if (stream.ReadByte() >= 0)
            throw error(new Problem($"yields more bytes than its size of {length}: not a regular file (or one being written to)", false));
        return buffer;
    }

    /// <summary>Offset of the first byte that is not part of valid UTF-8, or -1 when all of it is.</summary>
    public static int FirstInvalidUtf8(ReadOnlySpan<byte> bytes)
    {
        if (Utf8.IsValid(bytes)) return -1;
        var i = 0;
        while (i < bytes.Length)
        {
            if (System.Text.Rune.DecodeFromUtf8(bytes[i..], out _, out var consumed) != System.Buffers.OperationStatus.Done) return i;
            i += consumed;
        }
        return -1;
    }

    /// <summary>1-based line and byte column of <paramref name="offset"/>.</summary>
    public static (int Line, int Column) LineAndColumn(ReadOnlySpan<byte> bytes, int offset)
    {
        var before = bytes[..offset];
        var lastNewline = before.LastIndexOf((byte)'\n');
        return (before.Count((byte)'\n') + 1, offset - lastNewline);
    }

    /// <summary>
    /// Why <paramref name="bytes"/> (a whole file) is not UTF-8 text, with where and what to do; null when it is
    /// (a UTF-8 byte order mark is fine). <paramref name="offset"/> is the first bad byte, -1 for UTF-16 (all of it).
    /// </summary>
    public static string? Utf8Problem(ReadOnlySpan<byte> bytes, out int offset)
    {
        offset = -1;
        if (bytes.StartsWith((ReadOnlySpan<byte>)[0xFF, 0xFE]) || bytes.StartsWith((ReadOnlySpan<byte>)[0xFE, 0xFF]))
            return $"UTF-16 text (it starts with the byte order mark {bytes[0]:X2} {bytes[1]:X2}), not UTF-8: save the file as UTF-8";
        offset = FirstInvalidUtf8(bytes);
        return offset < 0 ? null : InvalidByteMessage(bytes, offset);
    }

    /// <summary>"byte 0xE9 at offset 63 (line 3, column 23) is not UTF-8: save the file as UTF-8 (…)".</summary>
    public static string InvalidByteMessage(ReadOnlySpan<byte> wholeFile, int offset)
    {
        var (line, column) = LineAndColumn(wholeFile, offset);
        // Text that is not UTF-8 is most often Windows-1252 / Latin-1, what editors on Windows save by default.
        return $"byte 0x{wholeFile[offset]:X2} at offset {offset} (line {line}, column {column}) is not UTF-8: " +
            "save the file as UTF-8 (e.g. iconv -f windows-1252 -t utf-8)";
    }

    /// <summary>The bytes after a UTF-8 byte order mark, if there is one.</summary>
    public static ReadOnlySpan<byte> WithoutByteOrderMark(ReadOnlySpan<byte> bytes) =>
        bytes.StartsWith((ReadOnlySpan<byte>)[0xEF, 0xBB, 0xBF]) ? bytes[3..] : bytes;

    public static string Size(long bytes) => bytes switch
    {
        >= 1L << 30 when bytes % (1L << 30) == 0 => $"{bytes >> 30} GiB",
        >= 1L << 20 when bytes % (1L << 20) == 0 => $"{bytes >> 20} MiB",
        >= 1L << 10 when bytes % (1L << 10) == 0 => $"{bytes >> 10} KiB",
        _ => bytes.ToString(CultureInfo.InvariantCulture) + " bytes",
    };

    private enum FileKind { Missing, Unknown, Regular, Directory, CharacterDevice, BlockDevice, Fifo, Socket, Other }

    private static FileKind KindOf(string path)
    {
        if (Directory.Exists(path)) return FileKind.Directory;
        if (!File.Exists(path)) return FileKind.Missing;
        // .NET reports no file type beyond directory/link, so ask the kernel (statx, Linux); elsewhere the bounded read
        // in ReadAllBytes is the guard.
        return Statx.Mode(path) is { } mode ? (mode & 0xF000) switch
        {
            0x8000 => FileKind.Regular,
            0x4000 => FileKind.Directory,
            0x2000 => FileKind.CharacterDevice,
            0x6000 => FileKind.BlockDevice,
            0x1000 => FileKind.Fifo,
            0xC000 => FileKind.Socket,
            _ => FileKind.Other,
        } : FileKind.Unknown;
    }

    /// <summary>statx(2), whose struct has one layout on every Linux architecture (stx_mode is the u16 at byte 28).</summary>
    private static unsafe class Statx
    {
        private const int AtFdCwd = -100;
        private const uint StatxType = 0x1;
        private static readonly delegate* unmanaged<int, byte*, int, uint, byte*, int> Function = Resolve();

        private static delegate* unmanaged<int, byte*, int, uint, byte*, int> Resolve()
        {
            if (!OperatingSystem.IsLinux()) return null;
            foreach (var name in new[] { "libc.so.6", "libc" })
                if (NativeLibrary.TryLoad(name, out var lib) && NativeLibrary.TryGetExport(lib, "statx", out var f))
                    return (delegate* unmanaged<int, byte*, int, uint, byte*, int>)f;
            return null;
        }

        /// <summary>st_mode of the file a path finally names (links followed), or null when it cannot be asked.</summary>
        public static int? Mode(string path)
        {
            if (Function == null) return null;
            var buffer = stackalloc byte[256];
            var name = System.Text.Encoding.UTF8.GetBytes(path + "\0");
            fixed (byte* p = name)
            {
                if (Function(AtFdCwd, p, 0, StatxType, buffer) != 0) return null;
            }
            if ((*(uint*)buffer & StatxType) == 0) return null;
            return *(ushort*)(buffer + 28);
        }
    }
}
